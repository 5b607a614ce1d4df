"""Direct scheduling: each request runs on its own, at most ``instances`` at once."""

from __future__ import annotations

import asyncio

from serving.clock import Clock
from serving.errors import DeadlineExceededError
from serving.models.scheduling.base import Execute, Inputs, OnExecution, Outcome


class DirectScheduler:
    def __init__(
        self, execute: Execute, *, instances: int, clock: Clock, on_execution: OnExecution
    ) -> None:
        self._execute = execute
        self._slots = asyncio.Semaphore(instances)
        self._clock = clock
        self._on_execution = on_execution
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
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            began = clock.now()
            if timeout_s is not None and began - queued > timeout_s:
                raise DeadlineExceededError(timeout_ms=timeout_s * 1000)
            outputs = await self._execute(inputs, names)
            compute = clock.now() - began
        finally:
            self._slots.release()
        self._on_execution(rows, compute)
        return Outcome(outputs, began - queued, compute, rows)

    async def close(self) -> None:
        pass
