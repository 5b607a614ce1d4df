"""perf_analyzer-style measurement: closed or open loop, windows repeated until stable.

Closed loop keeps N requests in flight. Open loop sends at a target rate with Poisson arrivals
(exactly the rate's count per second, see ``arrivals``) and times each request from its
*scheduled* send time, so a server that falls behind shows its queueing in the latencies instead
of slowing the client down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.load import Target, sender
from benchmarks.stats import Window, stable, summarize

MAX_OUTSTANDING = 2048
"""Open loop: requests in flight beyond this are counted as ``client_backlog`` errors."""
DRAIN_TIMEOUT_S = 10.0
"""How long a finished measurement waits for its requests still in flight before cancelling them."""
CLIENT_BOUND_CPU = 0.9
"""The asyncio client runs on one core: above this share of it, it limits the figures."""


@dataclass(frozen=True)
class Plan:
    protocol: str
    concurrency: int | None = None
    """Closed loop: requests in flight."""
    rate: float | None = None
    """Open loop: requests per second (Poisson arrivals)."""
    window_s: float = 2.0
    max_windows: int = 8
    stable_windows: int = 3
    tolerance: float = 0.10
    warmup_s: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("a plan is closed loop (concurrency) or open loop (rate)")


def arrivals(rate: float, rng: np.random.Generator, block_s: float = 1.0) -> Iterator[float]:
    """Send times (seconds from the start) of an open loop at ``rate`` req/s: Poisson arrivals
    conditioned on their count per block, i.e. ``rate * block_s`` uniform times per block.

    Plain exponential gaps offer the nominal rate only on average: over the few hundred
    requests a slow model gets in a probe, one seed's draws ran 10-15% short at every rate, so
    the probes offered less load than they said. Within a block arrivals stay as bursty as
    Poisson ones.
    """
    block = 0
    carry = 0.0
    while True:
        expected = rate * block_s + carry
        count = int(expected)
        carry = expected - count
        for offset in np.sort(rng.uniform(0.0, block_s, count)):
            yield block * block_s + float(offset)
        block += 1


@dataclass
class _Collector:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, exc: BaseException) -> None:
        status = getattr(exc, "status", None) or getattr(exc, "code", None)  # tritonclient, grpc
        kind = str(status()) if callable(status) and status() else type(exc).__name__
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def take(self, seconds: float) -> tuple[Window, dict[str, int]]:
        window = Window(seconds, tuple(self.latencies), sum(self.errors.values()))
        errors = self.errors
        self.latencies, self.errors = [], {}
        return window, errors


async def measure(plan: Plan, urls: dict[str, str], target: Target) -> dict[str, Any]:
    """Measure until ``stable_windows`` windows agree (or ``max_windows`` pass); report those."""
    # This process may be a Ray driver with a large heap: a full collection pass stalls its loop
    # for ~100 ms, which an open loop records as server latency. Long-lived objects stay out.
    gc.collect()
    gc.freeze()
    send, client = sender(plan.protocol, urls, target)
    collector = _Collector()
    running = True
    outstanding: set[asyncio.Task[None]] = set()

    async def timed(index: int, started: float) -> None:
        try:
            await send(index)
            collector.latencies.append(time.perf_counter() - started)
        except Exception as exc:
            collector.error(exc)

    async def closed_worker(offset: int, step: int) -> None:
        index = offset
        while running:
            await timed(index, time.perf_counter())
            index += step

    async def open_generator(rate: float) -> None:
        rng = np.random.default_rng(plan.seed)
        began = time.perf_counter()
        index = 0
        for offset in arrivals(rate, rng):
            if not running:
                break
            next_at = began + offset
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
                if not running:
                    break
            if len(outstanding) >= MAX_OUTSTANDING:
                collector.errors["client_backlog"] = collector.errors.get("client_backlog", 0) + 1
                continue
            task = asyncio.create_task(timed(index, next_at))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
            index += 1

    if plan.concurrency is not None:
        drivers = [asyncio.create_task(closed_worker(i, plan.concurrency))
                   for i in range(plan.concurrency)]  # fmt: skip
    else:
        assert plan.rate is not None
        drivers = [asyncio.create_task(open_generator(plan.rate))]

    await asyncio.sleep(plan.warmup_s)
    collector.take(plan.warmup_s)
    windows: list[Window] = []
    errors_by_kind: list[dict[str, int]] = []
    cpu_began, wall_began = time.process_time(), time.perf_counter()
    while len(windows) < plan.max_windows:
        began = time.perf_counter()
        await asyncio.sleep(plan.window_s)
        window, errors = collector.take(time.perf_counter() - began)
        windows.append(window)
        errors_by_kind.append(errors)
        if stable(windows, count=plan.stable_windows, tolerance=plan.tolerance):
            break
    client_cpu = (time.process_time() - cpu_began) / (time.perf_counter() - wall_began)
    running = False
    # Collect the answers still owed, as perf_analyzer does, so that the next measurement starts
    # on an idle server: at 64 in flight of a 37 ms CNN the server has ~1.2 s of work queued,
    # more than a warm-up, and would otherwise bill it to the next measurement's first window.
    pending = [*drivers, *outstanding]
    _, late = await asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S)  # drivers: at least one
    for task in late:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await client.close()

    used = windows[-plan.stable_windows :]
    latencies = [x for w in used for x in w.latencies_s]
    seconds = sum(w.seconds for w in used)
    errors: dict[str, int] = {}
    for counts in errors_by_kind[-plan.stable_windows :]:
        for kind, count in counts.items():
            errors[kind] = errors.get(kind, 0) + count
    return {
        "protocol": plan.protocol,
        "mode": "closed" if plan.concurrency is not None else "open",
        "concurrency": plan.concurrency,
        "rate": plan.rate,
        "throughput_rps": len(latencies) / seconds if seconds else 0.0,
        **summarize(latencies),
        "requests": len(latencies),
        "errors": errors,
        "error_count": sum(errors.values()),
        "windows": len(windows),
        "stable": stable(windows, count=plan.stable_windows, tolerance=plan.tolerance),
        "client_cpu_cores": round(client_cpu, 3),
        "client_bound": client_cpu >= CLIENT_BOUND_CPU,
    }


def server_breakdown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-request queue and compute time, and rows per execution, from two statistics reads."""

    def delta(path: tuple[str, ...]) -> float:
        a: Any = after
        b: Any = before
        for key in path:
            a, b = a.get(key, {}), b.get(key, {})
        return float(a or 0) - float(b or 0)

    requests = delta(("inference_stats", "success", "count"))
    executions = delta(("execution_count",))
    if requests <= 0:
        return {"server_queue_ms": None, "server_compute_ms": None, "rows_per_execution": None}
    return {
        "server_queue_ms": delta(("inference_stats", "queue", "ns")) / requests / 1e6,
        "server_compute_ms": delta(("inference_stats", "compute_infer", "ns")) / requests / 1e6,
        "rows_per_execution": delta(("inference_count",)) / executions if executions else None,
    }


_generator: ProcessPoolExecutor | None = None


def _measure_here(plan: Plan, urls: dict[str, str], target: Target) -> dict[str, Any]:
    return asyncio.run(measure(plan, urls, target))


def measure_apart(plan: Plan, urls: dict[str, str], target: Target) -> dict[str, Any]:
    """``measure`` in a load-generator process of its own, started once and reused.

    The benchmark's own process is the Ray driver: Ray's threads there (log streaming, GCS
    subscriptions) take the GIL from an asyncio client often enough to cost it ~15% of its rate
    at 32 in flight. perf_analyzer, too, is a process of its own.
    """
    global _generator
    if _generator is None:
        _generator = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_generator.shutdown)
    return _generator.submit(_measure_here, plan, urls, target).result()


def bracketed(
    serve_and_measure: Callable[[], float], ceiling: Callable[[], float], pairs: int
) -> list[dict[str, float]]:
    """``pairs`` readings of a server's rate, each bracketed by readings of ``ceiling`` (the
    in-process limit) taken just before and just after it, on a quiet machine: a pair's ratio is
    the server's rate over the mean of the two readings around it, so that these machines'
    drift of several per cent within minutes falls on both sides alike."""
    readings = []
    before = ceiling()
    for _ in range(pairs):
        served = serve_and_measure()
        after = ceiling()
        readings.append({"in_process_before": before, "served": served,
                         "in_process_after": after,
                         "ratio": served / ((before + after) / 2)})  # fmt: skip
        before = after
    return readings


def spread(ratios: list[float]) -> dict[str, float]:
    return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}


def closed_loop(
    protocol: str, urls: dict[str, str], target: Target, concurrency: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` in flight for ``seconds`` after a 1 s warm-up: three windows, all kept."""
    plan = Plan(protocol, concurrency=concurrency, window_s=seconds / 3, max_windows=3)
    return measure_apart(plan, urls, target)
