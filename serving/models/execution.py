"""Where a model version's executions run: on the event loop while they are short, else in a
worker thread.

Handing an execution to a worker thread and back costs the event loop about 80 µs of CPU on the
machines we measure (an executor submit, a GIL hand-over and a wake-up through the loop's
self-pipe). A small model runs in less than that (``digits`` takes 6 µs), so for it the hop is
most of the request's cost. Each version keeps a moving average of its execution time per input
element; an execution expected to finish within ``inline_below_s`` runs inline, anything else
(and the first executions, before there is an estimate) goes to the pool. An inline execution
that overruns its bound raises the estimate to what it measured at once, so the next ones go to
the pool; pool executions keep feeding the average, and bring a version back when it is fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from serving.errors import InternalError

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
    """One version's execution cost (a moving average per input element) and where the next
    one runs."""

    def __init__(
        self, *, smoothing: float = 0.2, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        self._smoothing = smoothing
        self._timer = timer
        self.per_element_s: float | None = None
        """Moving average of seconds per input element; None until an execution has been
        timed."""

    def inline(self, workers: Workers, elements: int) -> bool:
        """Whether an execution over ``elements`` input elements is expected to finish within
        the bound (judged by size, not rows: a request with longer rows costs more)."""
        if workers.inline_below_s <= 0 or self.per_element_s is None:
            return False
        return self.per_element_s * max(elements, 1) < workers.inline_below_s

    async def run(self, workers: Workers, elements: int, fn: Callable[[], T]) -> T:
        try:
            if self.inline(workers, elements):
                return self._timed(fn, elements, workers.inline_below_s)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(workers.executor, self._timed, fn, elements)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller is cancelled: not the model's doing
            # The runtime itself raised it: an error to answer with, not a cancellation that
            # would leave the request without an answer.
            raise InternalError("the model's execution raised CancelledError") from None

    def _timed(self, fn: Callable[[], T], elements: int, bound_s: float | None = None) -> T:
        began = self._timer()
        try:
            return fn()
        finally:
            per_element = (self._timer() - began) / max(elements, 1)
            previous = self.per_element_s
            if previous is None or (bound_s is not None and per_element * elements > bound_s):
                # First measured, or an inline execution that overran its bound: take it as it
                # is, so that the next ones go to the pool until their times bring it down.
                self.per_element_s = per_element if previous is None else max(previous, per_element)
            else:
                self.per_element_s = previous + self._smoothing * (per_element - previous)
