"""Settling a model control change once the replicas have applied it: which versions failed
where, and what to serve instead of a version that failed on every replica. Pure functions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serving.control.channel import ReplicaReport
from serving.models.spec import ModelSpec, VersionSpec


@dataclass(frozen=True)
class Settled:
    problems: list[str]
    everywhere: dict[int, str]
    """Versions that failed on every replica that applied the change, with a reason."""
    corrected: ModelSpec | None
    """What to serve instead, when some version failed everywhere."""


def settle(spec: ModelSpec, previous: ModelSpec | None, applied: list[ReplicaReport]) -> Settled:
    """``spec`` as the replicas in ``applied`` (those that applied its change) report it; a
    change that failed as a whole falls back to ``previous``, else the failed versions keep
    their previous file or are marked unavailable."""
    name = spec.name
    failing: dict[int, list[str]] = {}
    for report in applied:
        for (model, version), (sha, reason) in report.failures.items():
            wanted = spec.version(version) if model == name else None
            if wanted is not None and wanted.sha256 == sha:
                failing.setdefault(version, []).append(reason)
    problems = [
        f"version {v}: failed on {len(reasons)} of {len(applied)} replicas: {reasons[0]}"
        for v, reasons in sorted(failing.items())
        if len(reasons) < len(applied)
    ]
    everywhere = {v: r[0] for v, r in failing.items() if len(r) == len(applied)}
    if not everywhere:
        return Settled(problems, {}, None)
    problems += [f"version {v}: {reason}" for v, reason in sorted(everywhere.items())]
    changed = changed_versions(spec, previous)
    if previous is not None and previous.error is None and changed <= set(everywhere):
        # The change failed as a whole: what served before serves on, and the index
        # shows the versions that did not load.
        known = {v.version for v in previous.versions}
        unavailable = dict(previous.unavailable)
        unavailable.update((v, r) for v, r in everywhere.items() if v not in known)
        corrected = dataclasses.replace(previous, unavailable=tuple(sorted(unavailable.items())))
        problems.append("what was served before keeps serving")
    else:
        kept: list[VersionSpec] = []
        unavailable = dict(spec.unavailable)
        same_config = previous is not None and previous.config == spec.config
        for wanted in spec.versions:
            old = previous.version(wanted.version) if previous and same_config else None
            if wanted.version not in everywhere:
                kept.append(wanted)
            elif old is not None and old.sha256 != wanted.sha256:
                kept.append(old)
                problems.append(f"version {wanted.version}: the previous file keeps serving")
            else:
                unavailable[wanted.version] = everywhere[wanted.version]
        corrected = dataclasses.replace(
            spec, versions=tuple(kept), unavailable=tuple(sorted(unavailable.items()))
        )
    return Settled(problems, everywhere, corrected)


def changed_versions(spec: ModelSpec, previous: ModelSpec | None) -> set[int]:
    """The versions of ``spec`` that serving it in place of ``previous`` would (re)load."""
    if previous is None or previous.config != spec.config:
        return {v.version for v in spec.versions}
    return {v.version for v in spec.versions if previous.version(v.version) != v}
