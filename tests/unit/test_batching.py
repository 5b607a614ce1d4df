"""The dynamic batcher with a fake clock and a fake model: no Ray, no runtime, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from serving.errors import DeadlineExceededError, OverloadedError
from serving.models.scheduling.batcher import Batcher, BatcherOptions, BatchRecord
from tests.unit.fakes import FakeClock, FakeModel


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def rows(n: int, width: int = 3, start: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": (np.arange(n * width, dtype=np.float32) + start).reshape(n, width)}


def run(test: Callable[[Batcher, FakeModel, FakeClock, list[BatchRecord]], Awaitable[None]],
        **options: Any) -> None:  # fmt: skip
    """Run ``test`` against a fresh batcher, then check nothing is left pending."""

    async def main() -> None:
        model, clock, records = FakeModel(), FakeClock(), []
        batcher = Batcher(
            model,
            BatcherOptions(**{"max_batch_size": 8, **options}),
            clock=clock,
            on_batch=records.append,
        )
        try:
            await test(batcher, model, clock, records)
        finally:
            model.gate.set()
            await batcher.close()
        assert batcher.pending == 0

    asyncio.run(main())


def test_full_batch_goes_without_waiting_for_the_delay() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        tasks = [asyncio.create_task(batcher.submit(rows(1, start=i))) for i in range(4)]
        await settle()
        assert model.batches == [4]
        outcomes = await asyncio.gather(*tasks)
        assert [o.batch_rows for o in outcomes] == [4, 4, 4, 4]

    run(test, max_batch_size=4, max_queue_delay_s=10.0)


def test_partial_batch_goes_when_the_delay_expires() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        tasks = [asyncio.create_task(batcher.submit(rows(1))) for _ in range(3)]
        await settle()
        assert model.batches == []
        clock.advance(0.004)
        await settle()
        assert model.batches == []
        clock.advance(0.001)
        await asyncio.gather(*tasks)
        assert model.batches == [3]
        assert records[0].requests == 3 and records[0].rows == 3

    run(test, max_queue_delay_s=0.005)


def test_preferred_batch_size_goes_at_once() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        tasks = [asyncio.create_task(batcher.submit(rows(1))) for _ in range(2)]
        await asyncio.gather(*tasks)
        assert model.batches == [2]

    run(test, max_queue_delay_s=10.0, preferred_batch_sizes=(2, 6))


def test_largest_preferred_size_the_queue_fills_goes_at_once() -> None:
    """As Triton does: 10 queued rows with preferred sizes 4 and 8 send 8 at once; the other 2
    wait out the delay (they make no preferred size)."""

    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        tasks = [asyncio.create_task(batcher.submit(rows(1, start=i))) for i in range(10)]
        await settle()
        assert model.batches == [8]
        clock.advance(10.0)
        outcomes = await asyncio.gather(*tasks)
        assert model.batches == [8, 2]
        assert [o.batch_rows for o in outcomes] == [8] * 8 + [2] * 2

    run(test, max_batch_size=16, max_queue_delay_s=10.0, preferred_batch_sizes=(4, 8))


def test_mixed_row_counts_are_packed_and_split_exactly() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        requests = [rows(1, start=0), rows(3, start=100), rows(2, start=200)]
        tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
        await settle()
        clock.advance(1.0)
        outcomes = await asyncio.gather(*tasks)
        assert model.batches == [6]
        for request, outcome in zip(requests, outcomes, strict=True):
            np.testing.assert_array_equal(outcome.outputs[0], request["x"] * 2)
            np.testing.assert_array_equal(outcome.outputs[1], request["x"].sum(axis=1))

    run(test, max_queue_delay_s=1.0)


def test_requests_with_different_inner_shapes_never_share_a_batch() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        tasks = [
            asyncio.create_task(batcher.submit(rows(1, width=3))),
            asyncio.create_task(batcher.submit(rows(1, width=4))),
            asyncio.create_task(batcher.submit(rows(2, width=3))),
        ]
        await settle()
        clock.advance(1.0)
        await settle()
        clock.advance(1.0)
        outcomes = await asyncio.gather(*tasks)
        assert sorted(model.batches) == [1, 3]
        assert outcomes[1].outputs[0].shape == (1, 4)

    run(test, max_queue_delay_s=1.0)


def test_next_batch_forms_while_the_current_one_runs() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        later = [asyncio.create_task(batcher.submit(rows(1))) for _ in range(3)]
        await settle()
        assert batcher.queued == 3
        model.gate.set()
        await asyncio.gather(first, *later)
        assert model.batches == [1, 3]

    run(test, max_queue_delay_s=0.0)


def test_queued_request_times_out_and_is_removed() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        waiting = asyncio.create_task(batcher.submit(rows(1)))
        lowered = asyncio.create_task(batcher.submit(rows(1, width=4), timeout_s=0.001))
        await settle()
        clock.advance(0.002)
        with pytest.raises(DeadlineExceededError, match="after 1 ms"):
            await lowered
        assert not waiting.done()
        clock.advance(0.01)
        with pytest.raises(DeadlineExceededError, match="after 10 ms"):
            await waiting
        assert batcher.queued == 0
        model.gate.set()
        await running
        assert model.batches == [1]

    run(test, default_timeout_s=0.01)


def test_full_queue_rejects_at_once() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        model.gate.clear()
        accepted = [asyncio.create_task(batcher.submit(rows(1)))]
        await settle()
        accepted += [asyncio.create_task(batcher.submit(rows(1, width=w))) for w in (4, 5)]
        await settle()
        with pytest.raises(OverloadedError, match="2 requests queued, limit is 2"):
            await batcher.submit(rows(1))
        model.gate.set()
        await asyncio.gather(*accepted)
        assert sorted(model.batches) == [1, 1, 1]

    run(test, max_queue_size=2)


def test_cancelled_request_leaves_the_queue() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        gone = asyncio.create_task(batcher.submit(rows(1)))
        kept = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        gone.cancel()
        await settle()
        assert batcher.queued == 1
        model.gate.set()
        await asyncio.gather(running, kept)
        assert gone.cancelled()
        assert model.batches == [1, 1]

    run(test)


def test_failed_batch_is_rerun_so_only_the_bad_request_fails() -> None:
    async def test(batcher: Batcher, model: FakeModel, clock: FakeClock, records: list) -> None:
        requests = [rows(1, start=1), rows(1, start=-5), rows(2, start=7)]
        tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], ValueError)
        np.testing.assert_array_equal(results[0].outputs[0], requests[0]["x"] * 2)
        np.testing.assert_array_equal(results[2].outputs[0], requests[2]["x"] * 2)
        assert model.batches == [4, 1, 1, 2]

    run(test, max_batch_size=4, max_queue_delay_s=1.0, preferred_batch_sizes=(4,))


def test_close_fails_queued_requests() -> None:
    async def main() -> None:
        model = FakeModel()
        model.gate.clear()
        batcher = Batcher(model, BatcherOptions(max_batch_size=2), clock=FakeClock(), name="m")
        running = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        queued = asyncio.create_task(batcher.submit(rows(1, width=4)))
        await settle()
        closing = asyncio.create_task(batcher.close())
        await settle()
        with pytest.raises(Exception, match="model 'm' is not ready: shutting down"):
            await queued
        model.gate.set()
        await closing
        await running
        assert batcher.pending == 0

    asyncio.run(main())
