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
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the event is set, so a cancelled waiter would carry on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()


MONOTONIC = MonotonicClock()
"""The process's clock, shared by everything that is not handed another."""
