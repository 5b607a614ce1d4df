"""The Prometheus exposition: every metric name, label set and bucket set, defined once here,
rendered from the node's statistics windows.

Nothing is counted twice: a replica records each request once, in its statistics windows
(``stats.py``); those windows feed the v2 statistics, the controller and this exposition alike.
A scrape reports the node: the answering replica adds up its own live windows and the snapshots
its siblings on the node keep writing (``node.py``). Counters come from every replica that ever
ran on the node in this server start (a replica that died keeps its counts, so ``rate()``
never sees a reset); gauges only from live ones.

``triton_aliases`` adds Triton's metric names (``nv_inference_request_success``, ...) with
Triton's units and types, computed from the same windows, so Triton dashboards work unchanged;
those names do not follow Prometheus' conventions (that is why they are not the default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from serving.observe.stats import LATENCY_BUCKETS_S, Key, ShadowKey, ShadowStats, StatsWindow

Kind = Literal["counter", "gauge", "histogram"]

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Rows per execution."""
LOAD_BUCKETS_S: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Seconds to load (open and warm up) one model version's session."""

MODEL_VERSION = ("model", "version")


@dataclass(frozen=True)
class Definition:
    name: str
    """Without the ``_total`` that counters get in the exposition."""
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


def _define(*definitions: Definition) -> dict[str, Definition]:
    return {d.name: d for d in definitions}


METRICS = _define(
    Definition(
        "serving_requests", "counter",
        "Inference requests answered, by model, version, protocol and status code (the HTTP "
        "status, or for gRPC the HTTP status of the same error).",
        ("model", "version", "protocol", "code"),
    ),
    Definition(
        "serving_request_duration_seconds", "histogram",
        "Time from a request's arrival to its answer, every answered request.",
        ("model", "version", "protocol"), LATENCY_BUCKETS_S,
    ),
    Definition(
        "serving_queue_duration_seconds", "histogram",
        "Time successful requests waited for an execution.",
        MODEL_VERSION, LATENCY_BUCKETS_S,
    ),
    Definition(
        "serving_compute_duration_seconds", "histogram",
        "Time successful requests spent in the model (their batch's execution).",
        MODEL_VERSION, LATENCY_BUCKETS_S,
    ),
    Definition(
        "serving_batch_size", "histogram",
        "Rows per model execution (a batch of requests, or one request).",
        MODEL_VERSION, BATCH_SIZE_BUCKETS,
    ),
    Definition(
        "serving_inferences", "counter",
        "Rows inferred (a request of a batch of 4 counts 4).", MODEL_VERSION,
    ),
    Definition(
        "serving_executions", "counter",
        "Model executions (a batch of requests counts once).", MODEL_VERSION,
    ),
    Definition(
        "serving_requests_in_flight", "gauge",
        "Requests inside a model version now: queued or running.", MODEL_VERSION,
    ),
    Definition(
        "serving_queue_depth", "gauge",
        "Requests waiting for an execution now.", MODEL_VERSION,
    ),
    Definition(
        "serving_rejections", "counter",
        "Requests turned away before they ran, by reason: queue_full, timeout, not_ready, "
        "too_large.",
        ("model", "version", "reason"),
    ),
    Definition(
        "serving_model_load_duration_seconds", "histogram",
        "Time to load one model version's session (open and warm up).",
        ("model",), LOAD_BUCKETS_S,
    ),
    Definition(
        "serving_model_version_loaded", "gauge",
        "Replicas of this node that serve the model version.", MODEL_VERSION,
    ),
    Definition(
        "serving_replicas_ready", "gauge",
        "Replicas of this node that are ready to serve.", (),
    ),
    Definition(
        "serving_drift_detected", "gauge",
        "1 when the latest complete window of sampled inputs or outputs differs from the "
        "version's reference profile beyond the family-wise significance level, else 0.",
        MODEL_VERSION,
    ),
    Definition(
        "serving_drift_p_value", "gauge",
        "The smallest p-value over the tensor's features in the latest window, multiplied by "
        "the number of features tested (Bonferroni), at most 1.",
        ("model", "version", "tensor"),
    ),
    Definition(
        "serving_drift_psi", "gauge",
        "The largest population stability index over the tensor's features in the latest "
        "window (for reading only: the decision uses the p-value).",
        ("model", "version", "tensor"),
    ),
    Definition(
        "serving_drift_samples", "counter",
        "Rows sampled for drift scoring.", MODEL_VERSION,
    ),
    Definition(
        "serving_traffic_weight", "gauge",
        "Share (0-1) of the model's unversioned requests its traffic table sends to the "
        "version (no samples for a model without a table).", MODEL_VERSION,
    ),
    Definition(
        "serving_rollout_rollbacks", "counter",
        "Rollouts to the version that their gates rolled back (the controller's count, which "
        "every replica's traffic table carries).", MODEL_VERSION,
    ),
    Definition(
        "serving_shadow_requests", "counter",
        "Copies of requests to the version mirrored to its shadow, by outcome: compared (the "
        "shadow answered), failed (it did not), dropped (it was busy).",
        ("model", "version", "shadow_version", "outcome"),
    ),
    Definition(
        "serving_shadow_rows", "counter",
        "Rows the shadow answered, by whether its top-1 (or, for non-classifiers, every value "
        "within tolerance) agreed with the primary's answer.",
        ("model", "version", "shadow_version", "agreement"),
    ),
    Definition(
        "serving_auth_failures", "counter",
        "Calls refused for their credential, by protocol and reason: missing (none sent), "
        "invalid (unknown token), scope (no admin scope), peer (admin call from another host "
        "where only loopback may make it).",
        ("protocol", "reason"),
    ),
)  # fmt: skip


@dataclass
class NodeView:
    """What one scrape reports: the node's windows and gauges, added up over its replicas."""

    windows: dict[Key, StatsWindow] = field(default_factory=dict)
    in_flight: dict[Key, int] = field(default_factory=dict)
    queued: dict[Key, int] = field(default_factory=dict)
    loaded: dict[Key, int] = field(default_factory=dict)
    loads: dict[str, list[float]] = field(default_factory=dict)
    ready: int = 0
    drift: list[DriftGauge] = field(default_factory=list)
    shadow: dict[ShadowKey, ShadowStats] = field(default_factory=dict)
    weights: dict[Key, float] = field(default_factory=dict)
    rollbacks: dict[Key, int] = field(default_factory=dict)
    """From the traffic tables (the same on every replica)."""
    auth_failures: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftGauge:
    model: str
    version: int
    detected: bool
    samples: int
    tensors: Mapping[str, tuple[float, float]]
    """tensor → (adjusted p-value, largest PSI)."""


def _version(version: int) -> str:
    return str(version) if version else ""


def _family(definition: Definition) -> Metric:
    kinds = {
        "counter": CounterMetricFamily,
        "gauge": GaugeMetricFamily,
        "histogram": HistogramMetricFamily,
    }
    family: Metric = kinds[definition.kind](
        definition.name, definition.help, labels=definition.labels
    )
    return family


def _histogram(
    family: Any, labels: list[str], counts: Iterable[int], total: float, bounds: Iterable[float]
) -> None:
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    counts = list(counts)
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        buckets.append((_le(bound), cumulative))
    cumulative += sum(counts[len(buckets) :])
    buckets.append(("+Inf", cumulative))
    family.add_metric(labels, buckets, total)


def _le(bound: float) -> str:
    return repr(float(bound))


def _batch_counts(window: StatsWindow) -> tuple[list[int], float]:
    counts = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
    total = 0.0
    for size, duration in window.batches.items():
        index = next(
            (i for i, b in enumerate(BATCH_SIZE_BUCKETS) if size <= b), len(BATCH_SIZE_BUCKETS)
        )
        counts[index] += duration.count
        total += size * duration.count
    return counts, total


def _load_counts(seconds: list[float]) -> list[int]:
    counts = [0] * (len(LOAD_BUCKETS_S) + 1)
    for value in seconds:
        index = next((i for i, b in enumerate(LOAD_BUCKETS_S) if value <= b), len(LOAD_BUCKETS_S))
        counts[index] += 1
    return counts


def families(view: NodeView) -> Iterator[Metric]:
    """The node's metrics in Prometheus' data model, from ``view``."""
    m: dict[str, Any] = {name: _family(d) for name, d in METRICS.items()}
    for (model, number), window in sorted(view.windows.items()):
        version = _version(number)
        for (protocol, code), count in sorted(window.answers.items()):
            m["serving_requests"].add_metric([model, version, protocol, str(code)], count)
        for protocol, histogram in sorted(window.durations.items()):
            _histogram(
                m["serving_request_duration_seconds"],
                [model, version, protocol],
                histogram.counts,
                histogram.sum_ns / 1e9,
                LATENCY_BUCKETS_S,
            )
        for reason, count in sorted(window.rejections.items()):
            m["serving_rejections"].add_metric([model, version, reason], count)
        if not number:
            continue  # requests that never reached a version: only counted, never run
        labels = [model, version]
        for name, histogram in (
            ("serving_queue_duration_seconds", window.queue),
            ("serving_compute_duration_seconds", window.compute),
        ):
            _histogram(m[name], labels, histogram.counts, histogram.sum_ns / 1e9, LATENCY_BUCKETS_S)
        counts, rows = _batch_counts(window)
        _histogram(m["serving_batch_size"], labels, counts, rows, BATCH_SIZE_BUCKETS)
        m["serving_inferences"].add_metric(labels, window.inference_count)
        m["serving_executions"].add_metric(labels, window.execution_count)
    for key in sorted(view.loaded):
        labels = [key[0], _version(key[1])]
        m["serving_requests_in_flight"].add_metric(labels, view.in_flight.get(key, 0))
        m["serving_queue_depth"].add_metric(labels, view.queued.get(key, 0))
        m["serving_model_version_loaded"].add_metric(labels, view.loaded[key])
    for model, seconds in sorted(view.loads.items()):
        _histogram(
            m["serving_model_load_duration_seconds"],
            [model],
            _load_counts(seconds),
            sum(seconds),
            LOAD_BUCKETS_S,
        )
    m["serving_replicas_ready"].add_metric([], view.ready)
    for (protocol, reason), count in sorted(view.auth_failures.items()):
        m["serving_auth_failures"].add_metric([protocol, reason], count)
    for gauge in view.drift:
        labels = [gauge.model, _version(gauge.version)]
        m["serving_drift_detected"].add_metric(labels, int(gauge.detected))
        m["serving_drift_samples"].add_metric(labels, gauge.samples)
        for tensor, (p_value, psi) in sorted(gauge.tensors.items()):
            m["serving_drift_p_value"].add_metric([*labels, tensor], p_value)
            if math.isfinite(psi):
                m["serving_drift_psi"].add_metric([*labels, tensor], psi)
    for (model, number), share in sorted(view.weights.items()):
        m["serving_traffic_weight"].add_metric([model, _version(number)], share)
    for (model, number), count in sorted(view.rollbacks.items()):
        m["serving_rollout_rollbacks"].add_metric([model, _version(number)], count)
    for (model, primary, shadow), stats in sorted(view.shadow.items()):
        labels = [model, _version(primary), _version(shadow)]
        for outcome, count in (
            ("compared", stats.pairs), ("failed", stats.errors), ("dropped", stats.dropped),
        ):  # fmt: skip
            m["serving_shadow_requests"].add_metric([*labels, outcome], count)
        m["serving_shadow_rows"].add_metric([*labels, "agreed"], stats.agreed_rows)
        m["serving_shadow_rows"].add_metric([*labels, "disagreed"], stats.rows - stats.agreed_rows)
    yield from m.values()


TRITON_COUNTERS: dict[str, tuple[str, str]] = {
    "nv_inference_request_success": ("Successful inference requests", "success"),
    "nv_inference_request_failure": ("Failed inference requests", "fail"),
    "nv_inference_request_duration_us": ("Cumulative request duration (µs)", "success"),
    "nv_inference_queue_duration_us": ("Cumulative queuing duration (µs)", "queue"),
    "nv_inference_compute_input_duration_us": ("Cumulative input duration (µs)", "compute_input"),
    "nv_inference_compute_infer_duration_us": ("Cumulative infer duration (µs)", "compute_infer"),
    "nv_inference_compute_output_duration_us": (
        "Cumulative output duration (µs)", "compute_output"
    ),
}  # fmt: skip
"""Triton's name → (help text, the v2 statistics stage it reads)."""


def triton_families(view: NodeView) -> Iterator[Metric]:
    """Triton's metric names, types and units, from the same windows (``--metrics-triton``)."""
    counters = {name: Metric(name, text, "counter") for name, (text, _) in TRITON_COUNTERS.items()}
    count = Metric("nv_inference_count", "Inferences performed (rows)", "counter")
    executions = Metric("nv_inference_exec_count", "Model executions performed", "counter")
    pending = Metric(
        "nv_inference_pending_request_count", "Requests awaiting execution now", "gauge"
    )
    for (model, number), window in sorted(view.windows.items()):
        if not number:
            continue
        labels = {"model": model, "version": str(number)}
        for name, (_, stage) in TRITON_COUNTERS.items():
            duration = window.stages[stage]
            value = duration.count if not name.endswith("_us") else duration.ns // 1000
            counters[name].add_sample(name, labels, value)
        count.add_sample("nv_inference_count", labels, window.inference_count)
        executions.add_sample("nv_inference_exec_count", labels, window.execution_count)
    for key in sorted(view.loaded):
        labels = {"model": key[0], "version": str(key[1])}
        pending.add_sample("nv_inference_pending_request_count", labels, view.queued.get(key, 0))
    yield from counters.values()
    yield from (count, executions, pending)


class NodeCollector(Collector):
    """A prometheus-client collector over a function that reads the node's view."""

    def __init__(self, read: Callable[[], NodeView], *, triton_aliases: bool = False) -> None:
        self._read = read
        self._triton_aliases = triton_aliases

    def collect(self) -> Iterator[Metric]:
        view = self._read()
        yield from families(view)
        if self._triton_aliases:
            yield from triton_families(view)
