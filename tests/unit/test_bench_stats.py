"""The benchmark statistics, without a server."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.measure import arrivals
from benchmarks.stats import Window, goodput_search, stable, summarize


def test_percentiles_in_milliseconds() -> None:
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    summary = summarize(latencies)
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == pytest.approx(100.0)


def test_percentiles_of_nothing_are_nan() -> None:
    assert all(math.isnan(v) for v in summarize([]).values())


def window(throughput: float, p99_ms: float, seconds: float = 1.0) -> Window:
    count = int(throughput * seconds)
    latencies = np.full(count, p99_ms / 1000 * 0.5)
    latencies[-max(1, count // 50) :] = p99_ms / 1000
    return Window(seconds, tuple(latencies.tolist()))


def test_three_agreeing_windows_are_stable() -> None:
    windows = [window(500, 40), window(1000, 10), window(1020, 10.5), window(980, 9.8)]
    assert stable(windows)
    assert not stable(windows[:3])


def test_drifting_throughput_or_latency_is_not_stable() -> None:
    assert not stable([window(1000, 10), window(1000, 10), window(1300, 10)])
    assert not stable([window(1000, 10), window(1000, 10), window(1000, 14)])
    assert not stable([window(1000, 10), window(1000, 10)])


def test_goodput_finds_the_knee_of_a_queueing_curve() -> None:
    capacity = 1000.0

    def p99_ms(rate: float) -> float:  # M/M/1-like: latency explodes near capacity
        return 1.0 / (1 - min(rate / capacity, 0.999)) * 5

    result = goodput_search(p99_ms, bound_ms=100.0, low=50, high=2000, resolution=0.01)
    assert 940 <= result.rate <= 950  # p99 = 100 ms at 950 req/s
    assert result.p99_ms <= 100.0
    assert len(result.probes) <= 12
    assert all(p <= 100 for r, p in result.probes if r <= result.rate)


def test_goodput_is_zero_when_even_the_lowest_rate_misses() -> None:
    result = goodput_search(lambda rate: 500.0, bound_ms=100, low=10, high=100)
    assert result.rate == 0.0
    assert result.probes == ((10, 500.0),)


def test_goodput_takes_the_top_when_it_meets_the_bound() -> None:
    result = goodput_search(lambda rate: 1.0, bound_ms=100, low=10, high=100)
    assert result.rate == 100


def test_goodput_rejects_an_empty_range() -> None:
    with pytest.raises(ValueError, match="0 < low < high"):
        goodput_search(lambda rate: 1.0, bound_ms=1, low=5, high=5)


def test_open_loop_arrivals_offer_exactly_the_rate_each_second() -> None:
    from itertools import islice

    rng = np.random.default_rng(0)
    times = list(islice(arrivals(37.5, rng), 375))  # ten seconds' worth
    assert times == sorted(times)
    per_second = np.bincount(np.floor(times).astype(int))
    assert set(per_second) <= {37, 38} and per_second.sum() == 375
    gaps = np.diff(times)
    assert 0.5 < gaps.std() / gaps.mean() < 1.5  # bursty like Poisson (1.0), not a metronome (0)
