"""Inference statistics as mergeable windows: what every replica counts, and what adds up.

A :class:`StatsWindow` holds one model version's counters (requests, rows, executions, the time
spent per stage, executions per batch size, and a latency histogram over :data:`LATENCY_BUCKETS_S`).
Windows add (:meth:`StatsWindow.add`) and subtract (:meth:`StatsWindow.minus`), so a replica keeps
cumulative windows, the controller sums the latest one of every replica for the application's
totals, and the difference of two snapshots is the window between them (what rollout gates and
rates read). The v2 statistics document is rendered from a window, never counted separately.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the request-latency histogram: dense from 100 µs to 1 s, sparse to
10 s; one more bucket counts everything slower."""

_BOUNDS_NS = tuple(round(b * 1e9) for b in LATENCY_BUCKETS_S)

Key = tuple[str, int]
"""(model, version)."""


@dataclass(slots=True)
class Duration:
    """How many times something happened and the nanoseconds it took in all."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def merge(self, other: Duration) -> None:
        self.count += other.count
        self.ns += other.ns

    def minus(self, other: Duration) -> Duration:
        return Duration(self.count - other.count, self.ns - other.ns)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


def _durations() -> dict[str, Duration]:
    return {stage: Duration() for stage in STAGES}


STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
"""The v2 statistics extension's per-request durations."""


@dataclass(slots=True)
class StatsWindow:
    """One model version's counters over some span of time. ``execution_count`` is below
    ``inference_count`` (rows) when requests are batched."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    """Wall-clock milliseconds since the epoch of the latest success, as Triton reports it."""
    stages: dict[str, Duration] = field(default_factory=_durations)
    batches: dict[int, Duration] = field(default_factory=dict)
    """Executions by batch size (rows), with their compute time."""
    latency: list[int] = field(default_factory=lambda: [0] * (len(_BOUNDS_NS) + 1))
    """Successful requests per latency bucket; the last counts those above every bound."""

    def record_success(
        self, rows: int, total_ns: int, *, input_ns: int, queue_ns: int, infer_ns: int
    ) -> None:
        stages = self.stages
        self.inference_count += rows
        stages["success"].add(total_ns)
        stages["compute_input"].add(input_ns)
        stages["queue"].add(queue_ns)
        stages["compute_infer"].add(infer_ns)
        stages["compute_output"].add(max(0, total_ns - input_ns - queue_ns - infer_ns))
        self.latency[bisect.bisect_left(_BOUNDS_NS, total_ns)] += 1
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        self.stages["fail"].add(total_ns)

    def record_execution(self, rows: int, compute_ns: int) -> None:
        self.execution_count += 1
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = Duration()
        batch.add(compute_ns)

    @property
    def requests(self) -> int:
        """Requests answered, successfully or not."""
        return self.stages["success"].count + self.stages["fail"].count

    def copy(self) -> StatsWindow:
        return StatsWindow().add(self)

    def add(self, other: StatsWindow) -> StatsWindow:
        """Add ``other`` into this window; returns it."""
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for stage, duration in other.stages.items():
            self.stages[stage].merge(duration)
        for size, duration in other.batches.items():
            self.batches.setdefault(size, Duration()).merge(duration)
        for index, count in enumerate(other.latency):
            self.latency[index] += count
        return self

    def minus(self, earlier: StatsWindow) -> StatsWindow:
        """What happened between ``earlier`` (a snapshot of the same counters) and this one."""
        return StatsWindow(
            inference_count=self.inference_count - earlier.inference_count,
            execution_count=self.execution_count - earlier.execution_count,
            last_inference_ms=self.last_inference_ms,
            stages={s: d.minus(earlier.stages[s]) for s, d in self.stages.items()},
            batches={
                size: d.minus(earlier.batches.get(size, Duration()))
                for size, d in self.batches.items()
                if d.count != earlier.batches.get(size, Duration()).count
            },
            latency=[a - b for a, b in zip(self.latency, earlier.latency, strict=True)],
        )

    def as_v2(self, name: str, version: str) -> dict[str, Any]:
        """The v2 statistics extension's document for this window."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {stage: d.as_dict() for stage, d in self.stages.items()},
            "batch_stats": [
                {"batch_size": size, "compute_infer": d.as_dict()}
                for size, d in sorted(self.batches.items())
            ],
        }


def merge(windows: list[StatsWindow]) -> StatsWindow:
    total = StatsWindow()
    for window in windows:
        total.add(window)
    return total


class StatsBook:
    """A replica's cumulative windows, one per model version, kept across reloads and swaps."""

    def __init__(self) -> None:
        self._windows: dict[Key, StatsWindow] = {}

    def window(self, model: str, version: int) -> StatsWindow:
        key = (model, version)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = StatsWindow()
        return window

    def snapshot(self) -> dict[Key, StatsWindow]:
        """Copies of every window, safe to send elsewhere."""
        return {key: window.copy() for key, window in self._windows.items()}
