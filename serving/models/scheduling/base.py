"""What a scheduler is: it decides when a request's execution runs and measures where the time
went. Two kinds share this interface: direct (``direct.py``) and dynamically batched
(``batcher.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

T = TypeVar("T")

Inputs = dict[str, np.ndarray]
Execute = Callable[[Inputs, list[str]], Awaitable[list[np.ndarray]]]
"""Runs one execution (a request, or a packed batch) for the named outputs, in their order."""
OnExecution = Callable[[int, float], None]
"""Told of every execution: its rows and its compute seconds."""


@dataclass
class Outcome:
    """One request's outputs and where its time went."""

    outputs: list[np.ndarray]
    queue_s: float
    compute_s: float
    batch_rows: int


class Scheduler(Protocol):
    @property
    def would_queue(self) -> bool:
        """Whether a request arriving now would wait in a queue (so that a client leaving is
        worth watching for)."""
        ...

    @property
    def queued(self) -> int:
        """Requests waiting for an execution now."""
        ...

    async def run(
        self, inputs: Inputs, rows: int, names: list[str], timeout_s: float | None
    ) -> Outcome:
        """Run one request of ``rows`` rows for outputs ``names``; ``timeout_s`` bounds how
        long it may wait before it runs."""
        ...

    async def close(self) -> None:
        """Called once no request is inside: release what the scheduler holds."""
        ...


async def hold_until_done(work: Awaitable[T], release: Callable[[], None]) -> T:
    """Await ``work``, calling ``release`` once it has finished, not before: a caller cancelled
    meanwhile (its client left) stops waiting, but the execution it started runs on in its
    worker thread, and keeps its slot until then."""
    task = asyncio.ensure_future(work)

    def finished(done: asyncio.Future[T]) -> None:
        release()
        if not done.cancelled():
            done.exception()  # retrieved: a caller that left has no use for it

    task.add_done_callback(finished)
    return await asyncio.shield(task)
