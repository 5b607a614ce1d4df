"""The statistics behind every benchmark figure: percentiles, window stability, goodput search.

Pure functions, no I/O: unit-tested without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summarize(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99/max in milliseconds (NaN when there is no sample)."""
    if len(latencies_s) == 0:
        return {**{f"p{p}_ms": float("nan") for p in PERCENTILES}, "max_ms": float("nan")}
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    values = np.percentile(ms, PERCENTILES)
    return {
        **{f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, values, strict=True)},
        "max_ms": float(ms.max()),
    }


@dataclass(frozen=True)
class Window:
    """One measurement window: how many requests finished and their latencies."""

    seconds: float
    latencies_s: tuple[float, ...]
    errors: int = 0

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds > 0 else 0.0

    @property
    def p99_ms(self) -> float:
        return summarize(self.latencies_s)["p99_ms"]


def stable(windows: Sequence[Window], *, count: int = 3, tolerance: float = 0.10) -> bool:
    """True when the last ``count`` windows agree within ``tolerance`` of their mean, in both
    throughput and p99 latency (perf_analyzer's stability rule)."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    for values in ([w.throughput for w in last], [w.p99_ms for w in last]):
        mean = float(np.mean(values))
        if not np.isfinite(mean) or mean <= 0:
            return False
        if max(abs(v - mean) for v in values) > tolerance * mean:
            return False
    return True


@dataclass(frozen=True)
class GoodputResult:
    rate: float
    """Highest request rate (req/s) found whose p99 stays under the bound; 0 if none."""
    p99_ms: float
    probes: tuple[tuple[float, float], ...]
    """Every (rate, p99 ms) measured, in order."""


def goodput_search(
    measure_p99_ms: Callable[[float], float],
    *,
    bound_ms: float,
    low: float,
    high: float,
    resolution: float = 0.05,
    max_probes: int = 12,
) -> GoodputResult:
    """The highest open-loop rate in [low, high] whose p99 latency is at most ``bound_ms``.

    Assumes p99 grows with the rate (queueing); bisects until the bracket is within
    ``resolution`` (relative) or ``max_probes`` measurements are spent.
    """
    if not 0 < low < high:
        raise ValueError("need 0 < low < high")
    probes: list[tuple[float, float]] = []

    def probe(rate: float) -> float:
        p99 = measure_p99_ms(rate)
        probes.append((rate, p99))
        return p99

    best_rate, best_p99 = 0.0, float("nan")
    p99 = probe(low)
    if not p99 <= bound_ms:
        return GoodputResult(0.0, p99, tuple(probes))
    best_rate, best_p99 = low, p99
    p99 = probe(high)
    if p99 <= bound_ms:
        return GoodputResult(high, p99, tuple(probes))
    good, bad = low, high
    while (bad - good) / bad > resolution and len(probes) < max_probes:
        middle = (good + bad) / 2
        p99 = probe(middle)
        if p99 <= bound_ms:
            good, best_rate, best_p99 = middle, middle, p99
        else:
            bad = middle
    return GoodputResult(best_rate, best_p99, tuple(probes))
