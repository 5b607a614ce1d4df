"""Time, injected: every deadline, delay and duration reads one monotonic clock tests replace."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> None:
        """Return when ``event`` is set or ``timeout_s`` has passed on this clock."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> None:
        if timeout_s is None:
            await event.wait()
            return
        if timeout_s <= 0:
            return
        # Python >= 3.11 (pyproject): asyncio.TimeoutError is the builtin TimeoutError.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)


MONOTONIC = MonotonicClock()
"""The process's clock, shared by everything that is not handed another."""
