"""Direct scheduling: each request runs on its own, at most ``instances`` at once, the rest
waiting in a bounded queue."""

from __future__ import annotations

import asyncio

from serving.clock import Clock
from serving.errors import DeadlineExceededError, OverloadedError
from serving.models.scheduling.base import Execute, Inputs, OnExecution, Outcome, hold_until_done
from serving.models.scheduling.batcher import BatcherOptions

DEFAULT_MAX_QUEUED = BatcherOptions.max_queue_size
"""Requests that may wait for a slot (the batcher's default queue size) before new ones get
503 / UNAVAILABLE."""


class DirectScheduler:
    def __init__(
        self,
        execute: Execute,
        *,
        instances: int,
        clock: Clock,
        on_execution: OnExecution,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self._execute = execute
        self._slots = asyncio.Semaphore(instances)
        self._clock = clock
        self._on_execution = on_execution
        self._max_queued = max_queued
        self._waiting = 0

    @property
    def would_queue(self) -> bool:
        return False

    @property
    def queued(self) -> int:
        return self._waiting

    async def run(
        self, inputs: Inputs, rows: int, names: list[str], timeout_s: float | None
    ) -> Outcome:
        clock = self._clock
        queued = clock.now()
        if self._slots.locked():
            if self._waiting >= self._max_queued:
                raise OverloadedError(queued=self._waiting, max_queued=self._max_queued)
            self._waiting += 1
            try:
                async with asyncio.timeout(timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise DeadlineExceededError(timeout_ms=(timeout_s or 0) * 1000) from None
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()  # free: returns at once
        began = clock.now()
        if timeout_s is not None and began - queued > timeout_s:
            self._slots.release()
            raise DeadlineExceededError(timeout_ms=timeout_s * 1000)

        async def execute() -> Outcome:
            outputs = await self._execute(inputs, names)
            compute = clock.now() - began
            self._on_execution(rows, compute)
            return Outcome(outputs, began - queued, compute, rows)

        return await hold_until_done(execute(), self._slots.release)

    async def close(self) -> None:
        pass
