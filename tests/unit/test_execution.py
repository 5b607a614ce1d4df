"""Inline or worker-thread execution, decided from each version's running cost per input
element."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.errors import InternalError
from serving.models.execution import Execution, Workers


class SteppingTimer:
    """A fake timer: every execution appears to take ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.step = step
        self._now = 0.0
        self._started = False

    def __call__(self) -> float:
        if self._started:
            self._now += self.step
        self._started = not self._started
        return self._now


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1, thread_name_prefix="pool")
    yield executor
    executor.shutdown()


def where(execution: Execution, workers: Workers, elements: int = 1) -> str:
    """Which thread ran one execution: 'loop' or 'pool'."""

    async def main() -> str:
        loop_thread = threading.get_ident()
        ran_on = await execution.run(workers, elements, threading.get_ident)
        return "loop" if ran_on == loop_thread else "pool"

    return asyncio.run(main())


def test_first_execution_goes_to_the_pool_then_fast_ones_run_inline(pool: ThreadPoolExecutor):
    execution = Execution(timer=SteppingTimer(10e-6))
    workers = Workers(pool, inline_below_s=100e-6)
    assert where(execution, workers) == "pool"
    assert execution.per_element_s == pytest.approx(10e-6)
    assert where(execution, workers) == "loop"


def test_slow_executions_stay_in_the_pool(pool: ThreadPoolExecutor):
    execution = Execution(timer=SteppingTimer(5e-3))
    workers = Workers(pool, inline_below_s=100e-6)
    assert [where(execution, workers) for _ in range(3)] == ["pool"] * 3


def test_large_requests_of_a_fast_model_go_to_the_pool(pool: ThreadPoolExecutor):
    execution = Execution(timer=SteppingTimer(10e-6))
    workers = Workers(pool, inline_below_s=100e-6)
    where(execution, workers)  # 10 µs per element
    assert execution.inline(workers, elements=9) is True
    assert execution.inline(workers, elements=10) is False
    assert where(execution, workers, elements=20) == "pool"


def test_a_model_that_slows_down_moves_back_to_the_pool(pool: ThreadPoolExecutor):
    timer = SteppingTimer(10e-6)
    execution = Execution(timer=timer, smoothing=0.5)
    workers = Workers(pool, inline_below_s=100e-6)
    where(execution, workers)
    assert where(execution, workers) == "loop"
    timer.step = 1e-3
    assert where(execution, workers) == "loop"  # decided on the old estimate, then measured
    assert where(execution, workers) == "pool"


def test_zero_bound_turns_inline_execution_off(pool: ThreadPoolExecutor):
    execution = Execution(timer=SteppingTimer(1e-6))
    workers = Workers(pool, inline_below_s=0.0)
    assert [where(execution, workers) for _ in range(3)] == ["pool"] * 3


def test_failures_propagate_and_are_timed(pool: ThreadPoolExecutor):
    execution = Execution(timer=SteppingTimer(10e-6))
    workers = Workers(pool, inline_below_s=100e-6)

    def fail() -> None:
        raise RuntimeError("model fault")

    for _ in range(2):  # in the pool, then inline
        with pytest.raises(RuntimeError, match="model fault"):
            asyncio.run(execution.run(workers, 1, fail))
    assert execution.per_element_s == pytest.approx(10e-6)


def test_an_inline_execution_that_overruns_sends_the_next_to_the_pool(pool: ThreadPoolExecutor):
    """A slow call whose size looks familiar (its cost depends on the data): measured, it
    raises the estimate at once rather than by a fifth, and the next call leaves the loop."""
    timer = SteppingTimer(10e-6)
    execution = Execution(timer=timer)  # smoothing 0.2: a smoothed estimate would stay inline
    workers = Workers(pool, inline_below_s=100e-6)
    where(execution, workers)
    assert where(execution, workers) == "loop"
    timer.step = 50e-3
    assert where(execution, workers) == "loop"  # nothing foretold it
    assert execution.per_element_s == pytest.approx(50e-3)
    assert where(execution, workers) == "pool"


def test_a_runtime_raising_cancelled_error_is_an_internal_error(pool: ThreadPoolExecutor):
    """Not a cancellation of the caller: the request gets an answer (500), in the pool and
    inline alike."""
    execution = Execution(timer=SteppingTimer(10e-6))
    workers = Workers(pool, inline_below_s=100e-6)

    def cancelled() -> None:
        raise asyncio.CancelledError

    for _ in range(2):  # in the pool, then inline
        with pytest.raises(InternalError, match="raised CancelledError"):
            asyncio.run(execution.run(workers, 1, cancelled))
