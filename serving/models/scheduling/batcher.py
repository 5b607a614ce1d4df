"""Dynamic batching: concurrent requests packed along the batch dimension, with a bounded queue.

Independent of Ray and of the runtime: it is handed an ``execute`` coroutine that runs one packed
batch, and a clock. Requests whose non-batch dimensions (or dtypes) differ never share a batch.
A batch that fails is re-run request by request, so only the offending request fails.
:class:`BatchedScheduler` puts a batcher behind the scheduler interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.clock import MONOTONIC, Clock
from serving.errors import (
    DeadlineExceededError,
    InternalError,
    ModelNotReadyError,
    OverloadedError,
    ServingError,
)
from serving.models.scheduling.base import (
    Execute,
    Inputs,
    OnExecution,
    Outcome,
    hold_until_done,
)
from serving.observe.logs import Trace, current_trace

logger = logging.getLogger(__name__)

BatchExecute = Callable[[Inputs], Awaitable[list[np.ndarray]]]
"""Runs one (packed) batch; returns every output with the batch dimension first."""

ShapeKey = tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]


@dataclass(frozen=True)
class BatcherOptions:
    max_batch_size: int
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    default_timeout_s: float | None = None
    max_concurrent_batches: int = 1


@dataclass(eq=False)
class _Item:
    inputs: Inputs
    rows: int
    key: ShapeKey
    enqueued: float
    deadline: float | None
    timeout_s: float | None
    future: asyncio.Future[Outcome]
    started: float = 0.0
    trace: Trace | None = None
    """The request's trace (logged with the batch it runs in)."""


@dataclass
class BatchRecord:
    rows: int
    requests: int
    compute_s: float


def shape_key(inputs: Inputs) -> ShapeKey:
    """What requests must share to be packed together: per input, dtype and inner dims."""
    return tuple((name, array.dtype, array.shape[1:]) for name, array in sorted(inputs.items()))


class Batcher:
    """Queues requests for one model version and runs them in batches."""

    def __init__(
        self,
        execute: BatchExecute,
        options: BatcherOptions,
        *,
        name: str = "model",
        clock: Clock | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        if options.max_batch_size < 1:
            raise ValueError("dynamic batching needs max_batch_size >= 1")
        self._execute = execute
        self._name = name
        self._options = options
        self._clock = clock or MONOTONIC
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._busy = 0
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._scheduler = asyncio.create_task(self._schedule(), name="batcher")

    @property
    def pending(self) -> int:
        """Requests queued or executing (what a drain waits out)."""
        return len(self._queue) + sum(1 for t in self._running if not t.done())

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def runs_at_once(self) -> bool:
        """Whether a request submitted now skips the queue: idle, and told not to wait."""
        return (
            not self._queue
            and self._busy < self._options.max_concurrent_batches
            and self._options.max_queue_delay_s == 0
        )

    async def submit(self, inputs: Inputs, timeout_s: float | None = None) -> Outcome:
        """Queue one request (``rows`` = its batch dim) and wait for its outputs."""
        if self._closed:
            raise self._shutting_down()
        if len(self._queue) >= self._options.max_queue_size:
            raise OverloadedError(queued=len(self._queue), max_queued=self._options.max_queue_size)
        rows = int(next(iter(inputs.values())).shape[0])
        if rows > self._options.max_batch_size:
            raise ValueError(f"{rows} rows exceed max_batch_size {self._options.max_batch_size}")
        limits = [t for t in (self._options.default_timeout_s, timeout_s) if t is not None]
        limit = min(limits) if limits else None
        now = self._clock.now()
        alone = self.runs_at_once
        item = _Item(
            inputs=inputs,
            rows=rows,
            key=() if alone else shape_key(inputs),  # a request run alone is never grouped
            enqueued=now,
            deadline=None if limit is None else now + limit,
            timeout_s=limit,
            future=asyncio.get_running_loop().create_future(),
            trace=current_trace.get(),
        )
        if alone:
            return await self._run_alone(item)
        self._queue.append(item)
        self._wakeup.set()
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            # The client went away: drop the request if it has not started running.
            if item in self._queue:
                self._queue.remove(item)
                self._wakeup.set()
            item.future.cancel()
            raise

    async def close(self) -> None:
        """Refuse new work, fail what is queued, and wait for running batches."""
        self._closed = True
        while self._queue:
            item = self._queue.popleft()
            _fail(item, self._shutting_down())
        self._scheduler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._scheduler
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _run_alone(self, item: _Item) -> Outcome:
        """Idle and told not to wait: run at once, skipping the scheduler's hop. Requests that
        arrive meanwhile queue up and form the next batch."""
        self._busy += 1

        def finished() -> None:
            self._busy -= 1
            if self._queue:  # what queued meanwhile can go now
                self._wakeup.set()

        (outcome,) = await hold_until_done(self._execute_batch([item]), finished)
        return outcome

    def _shutting_down(self) -> ModelNotReadyError:
        return ModelNotReadyError(model=self._name, version=None, reason="shutting down")

    # The scheduler forms one batch at a time, while up to max_concurrent_batches run: the next
    # batch gathers in the queue while the current one executes.
    async def _schedule(self) -> None:
        while True:
            batch = await self._next_batch()
            self._busy += 1
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Item]:
        options = self._options
        while True:
            now = self._clock.now()
            self._expire(now)
            wait: float | None = None
            if self._queue and self._busy < options.max_concurrent_batches:
                group = self._group()
                rows = sum(item.rows for item in group)
                head = self._queue[0]
                waited = now - head.enqueued
                if rows < options.max_batch_size and waited < options.max_queue_delay_s:
                    group = self._preferred(group)  # as Triton: the largest preferred size
                if group:
                    for item in group:
                        self._queue.remove(item)
                    return group
                wait = head.enqueued + options.max_queue_delay_s - now
            deadlines = [i.deadline for i in self._queue if i.deadline is not None]
            if deadlines:
                until_deadline = min(deadlines) - now
                wait = until_deadline if wait is None else min(wait, until_deadline)
            self._wakeup.clear()
            await self._clock.wait(self._wakeup, wait)

    def _group(self) -> list[_Item]:
        """The oldest request and, in arrival order, the compatible ones that still fit."""
        head = self._queue[0]
        group, rows = [head], head.rows
        for item in list(self._queue)[1:]:
            if rows >= self._options.max_batch_size:
                break
            if item.key == head.key and rows + item.rows <= self._options.max_batch_size:
                group.append(item)
                rows += item.rows
        return group

    def _preferred(self, group: list[_Item]) -> list[_Item]:
        """The longest leading part of ``group`` whose rows make a preferred batch size, or
        nothing: what may go before the delay is out."""
        best, rows = 0, 0
        for count, item in enumerate(group, start=1):
            rows += item.rows
            if rows in self._options.preferred_batch_sizes:
                best = count
        return group[:best]

    def _expire(self, now: float) -> None:
        expired = [i for i in self._queue if i.deadline is not None and i.deadline <= now]
        for item in expired:
            self._queue.remove(item)
            assert item.timeout_s is not None
            _fail(item, DeadlineExceededError(timeout_ms=item.timeout_s * 1000))

    async def _run(self, batch: list[_Item]) -> None:
        try:
            live = [item for item in batch if not item.future.done()]
            if not live:
                return
            if logger.isEnabledFor(logging.DEBUG):
                traces = [item.trace.trace_id for item in live if item.trace is not None]
                logger.debug("%s: batch of %d requests, traces %s", self._name, len(live), traces)
            try:
                results = await self._execute_batch(live)
            except Exception as error:
                if len(live) == 1:
                    _fail(live[0], error)
                    return
                logger.warning("batch of %d requests failed; re-running them one by one", len(live))
                for item in live:
                    try:
                        (result,) = await self._execute_batch([item])
                    except Exception as single_error:
                        _fail(item, single_error)
                    else:
                        _resolve(item, result)
                return
            for item, result in zip(live, results, strict=True):
                _resolve(item, result)
        finally:
            # Whatever ended the batch (a runtime that raised CancelledError or another
            # BaseException, a cancelled task), each of its requests gets its one answer.
            unanswered = [item for item in batch if not item.future.done()]
            if unanswered:
                logger.error("%s: a batch ended without answering %d requests",
                             self._name, len(unanswered))  # fmt: skip
                for item in unanswered:
                    _fail(item, InternalError("the model's execution was interrupted"))
            self._busy -= 1
            self._wakeup.set()

    async def _execute_batch(self, batch: list[_Item]) -> list[Outcome]:
        started = self._clock.now()
        for item in batch:
            item.started = started
        if len(batch) == 1:
            packed = batch[0].inputs
        else:
            packed = {
                name: np.concatenate([item.inputs[name] for item in batch], axis=0)
                for name in batch[0].inputs
            }
        outputs = await self._execute(packed)
        compute = self._clock.now() - started
        total = sum(item.rows for item in batch)
        for output in outputs:
            if output.ndim == 0 or output.shape[0] != total:
                raise InternalError(
                    f"model returned an output of shape {list(output.shape)} for a batch of "
                    f"{total} rows; batched outputs need the batch dimension first"
                )
        if self._on_batch is not None:
            self._on_batch(BatchRecord(rows=total, requests=len(batch), compute_s=compute))
        if len(batch) == 1:
            (item,) = batch
            return [Outcome(outputs=list(outputs), queue_s=item.started - item.enqueued,
                            compute_s=compute, batch_rows=total)]  # fmt: skip
        offsets = np.cumsum([item.rows for item in batch])[:-1]
        pieces = [np.split(output, offsets) for output in outputs]
        return [
            Outcome(
                outputs=[piece[index] for piece in pieces],
                queue_s=item.started - item.enqueued,
                compute_s=compute,
                batch_rows=total,
            )
            for index, item in enumerate(batch)
        ]


def _resolve(item: _Item, outcome: Outcome) -> None:
    if not item.future.done():
        item.future.set_result(outcome)


def _fail(item: _Item, error: BaseException) -> None:
    if not item.future.done():
        if not isinstance(error, ServingError | asyncio.CancelledError):
            logger.error("batched inference failed", exc_info=error)
        item.future.set_exception(error)


class BatchedScheduler:
    """A :class:`Batcher` behind the scheduler interface: a model version's requests batched
    over every output (``output_names``, in the order ``execute`` returns them)."""

    def __init__(
        self,
        execute: Execute,
        options: BatcherOptions,
        *,
        output_names: list[str],
        name: str,
        clock: Clock,
        on_execution: OnExecution,
    ) -> None:
        self._index = {n: i for i, n in enumerate(output_names)}

        async def run_batch(inputs: Inputs) -> list[np.ndarray]:
            return await execute(inputs, output_names)

        def on_batch(record: BatchRecord) -> None:
            on_execution(record.rows, record.compute_s)

        self._batcher = Batcher(run_batch, options, name=name, clock=clock, on_batch=on_batch)

    @property
    def would_queue(self) -> bool:
        return not self._batcher.runs_at_once

    @property
    def queued(self) -> int:
        return self._batcher.queued

    async def run(
        self, inputs: Inputs, rows: int, names: list[str], timeout_s: float | None
    ) -> Outcome:
        outcome = await self._batcher.submit(inputs, timeout_s)
        index = self._index
        outcome.outputs = [outcome.outputs[index[n]] for n in names]
        return outcome

    async def close(self) -> None:
        await self._batcher.close()
