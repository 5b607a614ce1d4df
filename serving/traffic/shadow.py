"""Shadow traffic: copies of requests run on a version whose answers are compared, never returned.

A replica's :class:`Mirror` takes a copy after the primary version has answered (the primary's
outputs travel with it), into a bounded queue that a few worker tasks drain; when the queue is
full, or the shadow's own queue is, the copy is dropped and counted. The primary answer never
waits for, fails with, or is reordered by its shadow. Each pair is compared (:func:`compare`):
top-1 agreement for classifier outputs (integer labels, or the argmax of float scores), the
largest absolute and relative difference of float outputs against a tolerance, and both
versions' compute time. :class:`ShadowStats` add up like the statistics windows, per (model,
primary version, shadow version).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from serving.errors import OverloadedError, ServingError
from serving.observe.stats import ShadowStats

if TYPE_CHECKING:
    from serving.models.version import ModelVersion

logger = logging.getLogger(__name__)

QUEUE_CAPACITY = 64
"""Copies waiting for their shadow run, per replica; more are dropped."""
WORKERS = 2
"""Shadow runs in flight at once, per replica."""


def output_kinds(datatypes: list[str]) -> list[str]:
    """How each output is compared: ``exact`` (integers, booleans, bytes: a label), or
    ``float`` (differences; also top-1 when its last axis has more than one entry)."""
    return ["float" if t in ("FP16", "FP32", "FP64", "BF16") else "exact" for t in datatypes]


@dataclass(frozen=True)
class Pair:
    rows: int
    agreed_rows: int
    within: bool
    max_abs: float
    max_rel: float


def compare(
    primary: list[np.ndarray],
    shadow: list[np.ndarray],
    kinds: list[str],
    *,
    rows: int,
    batched: bool,
    atol: float,
    rtol: float,
) -> Pair:
    """Compare one request's outputs, row by row when the model batches (else as one row)."""
    count = rows if batched else 1
    agree = np.ones(count, dtype=bool)
    close_rows = np.ones(count, dtype=bool)
    classifier = False
    within = True
    max_abs = max_rel = 0.0
    for kind, a, b in zip(kinds, primary, shadow, strict=True):
        if a.shape != b.shape or (batched and a.shape[:1] != (count,)):
            agree[:] = False
            close_rows[:] = False
            within = False
            continue
        if kind == "exact":
            classifier = True
            agree &= (a == b).reshape(count, -1).all(axis=1)
            continue
        x = a.astype(np.float64, copy=False)
        y = b.astype(np.float64, copy=False)
        if x.ndim >= (2 if batched else 1) and x.shape[-1] > 1:
            classifier = True
            agree &= (x.argmax(axis=-1) == y.argmax(axis=-1)).reshape(count, -1).all(axis=1)
        both_nan = np.isnan(x) & np.isnan(y)
        diff = np.where(both_nan, 0.0, np.abs(x - y))
        diff = np.nan_to_num(diff, nan=np.inf)
        close = diff <= atol + rtol * np.abs(x)
        close_rows &= close.reshape(count, -1).all(axis=1)
        within = within and bool(close.all())
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            scale = np.maximum(np.abs(x), np.finfo(np.float64).tiny)
            max_rel = max(max_rel, float((diff / scale).max()))
    if not classifier:
        agree &= close_rows
    return Pair(count, int(agree.sum()), within, max_abs, max_rel)


@dataclass
class Copy:
    stats: ShadowStats
    target: ModelVersion
    feed: dict[str, np.ndarray]
    rows: int
    names: list[str]
    outputs: list[np.ndarray]
    primary_ns: int
    atol: float
    rtol: float


class Mirror:
    """A replica's shadow runs: a bounded queue and ``workers`` tasks (started on first use)."""

    def __init__(
        self,
        *,
        capacity: int = QUEUE_CAPACITY,
        workers: int = WORKERS,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_error = on_error
        self._capacity = capacity
        self._workers = workers
        self._queue: asyncio.Queue[Copy] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def offer(self, copy: Copy) -> None:
        """Take ``copy`` if there is room, else count it dropped; never waits."""
        copy.stats.mirrored += 1
        if self._queue is None:
            self._queue = asyncio.Queue(self._capacity)
            self._tasks = [
                asyncio.create_task(self._work(self._queue), name=f"shadow-{i}")
                for i in range(self._workers)
            ]
        try:
            self._queue.put_nowait(copy)
        except asyncio.QueueFull:
            copy.stats.dropped += 1

    async def _work(self, queue: asyncio.Queue[Copy]) -> None:
        while True:
            copy = await queue.get()
            try:
                await self._run(copy)
            except Exception:
                logger.exception("shadow comparison failed")

    async def _run(self, copy: Copy) -> None:
        target, stats = copy.target, copy.stats
        if not target.enter():
            stats.dropped += 1  # retired since: no longer served
            return
        try:
            outcome = await target.scheduler.run(copy.feed, copy.rows, copy.names, None)
        except OverloadedError:
            stats.dropped += 1
            return
        except Exception as error:
            if not isinstance(error, ServingError):
                logger.warning(
                    "shadow %s version %s failed: %s", target.model, target.version, error
                )
            stats.errors += 1
            self._on_error()
            return
        finally:
            target.leave()
        types = target.signature.output_types
        pair = compare(
            copy.outputs,
            outcome.outputs,
            output_kinds([types[n] for n in copy.names]),
            rows=copy.rows,
            batched=target.signature.max_batch_size > 0,
            atol=copy.atol,
            rtol=copy.rtol,
        )
        stats.pairs += 1
        stats.rows += pair.rows
        stats.agreed_rows += pair.agreed_rows
        stats.within += pair.within
        stats.max_abs = max(stats.max_abs, pair.max_abs)
        stats.max_rel = max(stats.max_rel, pair.max_rel)
        stats.primary_ns += copy.primary_ns
        stats.shadow_ns += round(outcome.compute_s * 1e9)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._queue = None
