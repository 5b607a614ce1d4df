"""Every accepted request gets exactly one answer, and an execution slot is free only once its
work has finished: the direct scheduler and the batcher under cancellation and faults, with
real worker threads (no Ray, no runtime)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.clock import MONOTONIC
from serving.errors import DeadlineExceededError, InternalError, OverloadedError
from serving.models.scheduling.base import Inputs
from serving.models.scheduling.batcher import Batcher, BatcherOptions
from serving.models.scheduling.direct import DirectScheduler

BOUND_S = 10.0
"""Every wait in these tests is bounded by this."""


class ThreadedModel:
    """An execute that runs in a worker thread, held at ``gate``; counts what runs at once."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def _work(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.release()
        try:
            assert self.gate.wait(BOUND_S)
            return [x * 2]
        finally:
            with self._lock:
                self.running -= 1

    async def __call__(self, inputs: Inputs, names: list[str] | None = None) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._work, inputs["x"])

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, BOUND_S)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(4, thread_name_prefix="model")
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


def x(n: int = 1) -> Inputs:
    return {"x": np.ones((n, 2), dtype=np.float32)}


def direct(model: ThreadedModel, **options: int) -> DirectScheduler:
    return DirectScheduler(
        model, instances=1, clock=MONOTONIC, on_execution=lambda rows, s: None, **options
    )


def test_direct_slot_is_held_until_a_cancelled_callers_thread_finishes(
    pool: ThreadPoolExecutor,
) -> None:
    model = ThreadedModel(pool)

    async def main() -> None:
        scheduler = direct(model)
        first = asyncio.create_task(scheduler.run(x(), 1, ["y"], None))
        await model.wait_started()
        first.cancel()  # its client left; its thread runs on
        second = asyncio.create_task(scheduler.run(x(), 1, ["y"], None))
        await asyncio.sleep(0.1)
        assert model.running == 1 and not second.done()  # waits for the slot
        model.gate.set()
        outcome = await asyncio.wait_for(second, BOUND_S)
        assert outcome.outputs[0].tolist() == [[2.0, 2.0]]
        assert model.most == 1
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())


def test_direct_queue_is_bounded_and_timeouts_count_while_waiting(
    pool: ThreadPoolExecutor,
) -> None:
    model = ThreadedModel(pool)

    async def main() -> None:
        scheduler = direct(model, max_queued=2)
        running = asyncio.create_task(scheduler.run(x(), 1, ["y"], None))
        await model.wait_started()
        waiting = [asyncio.create_task(scheduler.run(x(), 1, ["y"], None)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert scheduler.queued == 2
        with pytest.raises(OverloadedError, match="2 requests queued, limit is 2"):
            await scheduler.run(x(), 1, ["y"], None)
        waiting[0].cancel()  # room for one, which gives up after 50 ms without a slot
        await asyncio.sleep(0)
        with pytest.raises(DeadlineExceededError, match="timed out after 50 ms"):
            await asyncio.wait_for(scheduler.run(x(), 1, ["y"], 0.05), BOUND_S)
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(running, waiting[1]), BOUND_S)
        assert scheduler.queued == 0

    asyncio.run(main())


def test_a_batch_ended_by_cancelled_error_answers_every_request() -> None:
    """The runtime (or anything under the batch) raises CancelledError: no request is left
    waiting; each gets an internal error, and the batcher serves on."""
    calls = 0

    async def execute(inputs: Inputs) -> list[np.ndarray]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls <= 1:
            raise asyncio.CancelledError
        return [inputs["x"] * 2]

    async def main() -> None:
        batcher = Batcher(execute, BatcherOptions(max_batch_size=8, max_queue_delay_s=0.05))
        try:
            requests = [asyncio.create_task(batcher.submit(x())) for _ in range(3)]
            answers = await asyncio.wait_for(
                asyncio.gather(*requests, return_exceptions=True), BOUND_S
            )
            assert all(isinstance(a, InternalError) for a in answers), answers
            outcome = await asyncio.wait_for(batcher.submit(x()), BOUND_S)
            assert outcome.outputs[0].tolist() == [[2.0, 2.0]]
        finally:
            await batcher.close()
        assert batcher.pending == 0

    asyncio.run(main())


def test_batcher_run_alone_keeps_its_slot_until_the_thread_finishes(
    pool: ThreadPoolExecutor,
) -> None:
    model = ThreadedModel(pool)

    async def main() -> None:
        batcher = Batcher(model, BatcherOptions(max_batch_size=8, max_concurrent_batches=1))
        try:
            first = asyncio.create_task(batcher.submit(x()))
            await model.wait_started()
            first.cancel()
            assert not batcher.runs_at_once  # the thread still runs: the slot is taken
            second = asyncio.create_task(batcher.submit(x()))
            await asyncio.sleep(0.1)
            assert model.running == 1 and not second.done()
            model.gate.set()
            await asyncio.wait_for(second, BOUND_S)
            assert model.most == 1
        finally:
            model.gate.set()
            await batcher.close()

    asyncio.run(main())


def test_a_replica_stop_fits_inside_rays_graceful_shutdown_window() -> None:
    """Ray Serve kills a replica ``graceful_shutdown_timeout_s`` after its own wait loop: the
    replica's whole stop is budgeted inside that, and even the longest deregistration leaves
    the requests inside seconds to finish."""
    from serving.config import ServerConfig
    from serving.control.cluster import ReplicaDeployment
    from serving.replica import DRAIN_S, SHUTDOWN_S

    serve_options = ReplicaDeployment._deployment_config
    assert (
        SHUTDOWN_S + serve_options.graceful_shutdown_wait_loop_s
        < serve_options.graceful_shutdown_timeout_s
    )
    field = ServerConfig.model_fields["deregister_s"]
    (longest,) = [bound.le for bound in field.metadata if hasattr(bound, "le")]
    assert SHUTDOWN_S - longest - DRAIN_S >= 5.0
