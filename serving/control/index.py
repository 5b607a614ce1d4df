"""The repository index, as Triton lists it, and the summary ``serving top`` shows: from the
desired state and the replicas' reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.control.channel import ReplicaReport
from serving.control.drift import DriftBook
from serving.models.spec import DesiredState, ModelSpec
from serving.observe.stats import LATENCY_BUCKETS_S, Key, StatsWindow


def repository_index(
    state: DesiredState,
    *,
    on_disk: list[str],
    live: list[ReplicaReport],
    changed_at: Mapping[str, int],
    unloaded_versions: Mapping[str, tuple[int, ...]],
) -> list[dict[str, Any]]:
    """Every model on disk (and every loaded one) with each version's state: READY, LOADING
    (its latest change not yet applied on every live replica), UNLOADING, UNAVAILABLE with the
    reason; a model never loaded has a name only."""
    applied = min((r.applied for r in live), default=state.revision)
    rows: list[dict[str, Any]] = []
    for name in sorted({*on_disk, *state.models}):
        spec = state.models.get(name)
        settled = changed_at.get(name, 0) <= applied
        if spec is None:
            rows += _unloaded(name, state, settled, unloaded_versions.get(name) or ())
            continue
        if spec.error is not None:
            rows.append(_row(name, "", "UNAVAILABLE", spec.error))
            continue
        unavailable = dict(spec.unavailable)
        for number in sorted({*(v.version for v in spec.versions), *unavailable}):
            if number in unavailable:
                rows.append(_row(name, str(number), "UNAVAILABLE", unavailable[number]))
            elif not settled:
                rows.append(_row(name, str(number), "LOADING", ""))
            else:
                rows.append(_served(name, spec, number, live))
    return rows


def _unloaded(
    name: str, state: DesiredState, settled: bool, versions: tuple[int, ...]
) -> list[dict[str, Any]]:
    if name not in state.unloaded:
        return [{"name": name}]
    status, reason = ("UNAVAILABLE", "unloaded") if settled else ("UNLOADING", "")
    return [_row(name, str(v), status, reason) for v in versions] or [
        _row(name, "", status, reason)
    ]


def _served(name: str, spec: ModelSpec, number: int, live: list[ReplicaReport]) -> dict[str, Any]:
    """A version the state serves: READY, unless replicas failed to load its file."""
    wanted = spec.version(number)
    assert wanted is not None
    failures = [report.failures.get((name, number)) for report in live]
    reasons = [f[1] for f in failures if f is not None and f[0] == wanted.sha256]
    if not reasons:
        return _row(name, str(number), "READY", "")
    if len(reasons) == len(live):
        return _row(name, str(number), "UNAVAILABLE", reasons[0])
    shown = f"failed on {len(reasons)} of {len(live)} replicas: {reasons[0]}"
    return _row(name, str(number), "READY", shown)


def _row(name: str, version: str, state: str, reason: str) -> dict[str, Any]:
    return {"name": name, "version": version, "state": state, "reason": reason}


def summary(
    totals: Mapping[Key, StatsWindow],
    state: DesiredState,
    served: set[Key],
    live: list[ReplicaReport],
    drift: DriftBook,
) -> dict[str, Any]:
    """Per served version: the application's ``totals``, requests in flight and queued on the
    ``live`` replicas, its share of the model's traffic (when the model has a table) and drift."""
    gauges: dict[Key, list[int]] = {}
    for report in live:
        for key, (in_flight, queued) in report.gauges.items():
            sums = gauges.setdefault(key, [0, 0, 0])
            sums[0] += in_flight
            sums[1] += queued
            sums[2] += 1
    rows = []
    for key in sorted(served):
        window = totals.get(key, StatsWindow())
        in_flight, queued, replicas = gauges.get(key, [0, 0, 0])
        policy = state.traffic.get(key[0])
        rows.append(
            {
                "model": key[0],
                "version": str(key[1]),
                "statistics": window.as_v2(key[0], str(key[1])),
                "latency_bounds_s": list(LATENCY_BUCKETS_S),
                "latency_counts": list(window.latency),
                "in_flight": in_flight,
                "queued": queued,
                "replicas": replicas,
                "weight": None if policy is None else round(policy.share(key[1]) * 100, 3),
                "shadow": policy is not None and policy.shadow == key[1],
                "drift": drift.status(key),
            }
        )
    return {"versions": rows}
