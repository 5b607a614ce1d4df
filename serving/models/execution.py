"""Where a model version's executions run: on the event loop while they are short, else in a
worker thread.

Handing an execution to a worker thread and back costs the event loop about 80 µs of CPU on the
machines we measure (an executor submit, a GIL hand-over and a wake-up through the loop's
self-pipe). A small model runs in less than that (``digits`` takes 6 µs), so for it the hop is
most of the request's cost. Each version keeps a moving average of its execution time per row;
an execution expected to finish within ``inline_below_s`` runs inline, anything else (and the
first executions, before there is an estimate) goes to the pool. A version that slows down moves
back to the pool on its own, since pool executions keep feeding the average.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_INLINE_BELOW_S = 100e-6
"""Roughly what a hop to a worker thread costs; shorter executions are cheaper inline."""


@dataclass(frozen=True)
class Workers:
    """The pool that runs executions, and the expected duration below which they run inline
    (0 turns inline execution off)."""

    executor: Executor
    inline_below_s: float = DEFAULT_INLINE_BELOW_S


class Execution:
    """One version's execution cost (a moving average per row) and where the next one runs."""

    def __init__(
        self, *, smoothing: float = 0.2, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        self._smoothing = smoothing
        self._timer = timer
        self.per_row_s: float | None = None
        """Moving average of seconds per row; None until an execution has been timed."""

    def inline(self, workers: Workers, rows: int) -> bool:
        """Whether an execution of ``rows`` rows is expected to finish within the bound."""
        if workers.inline_below_s <= 0 or self.per_row_s is None:
            return False
        return self.per_row_s * max(rows, 1) < workers.inline_below_s

    async def run(self, workers: Workers, rows: int, fn: Callable[[], T]) -> T:
        if self.inline(workers, rows):
            return self._timed(fn, rows)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(workers.executor, self._timed, fn, rows)

    def _timed(self, fn: Callable[[], T], rows: int) -> T:
        began = self._timer()
        try:
            return fn()
        finally:
            per_row = (self._timer() - began) / max(rows, 1)
            previous = self.per_row_s
            self.per_row_s = (
                per_row if previous is None else previous + self._smoothing * (per_row - previous)
            )
