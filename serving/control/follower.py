"""A replica's side of the control plane: long-poll the controller, apply each new revision to
the registry, report statistics and load failures.

Two tasks: the poller keeps a long poll open (each poll carries a fresh report, at least once a
second) and the applier applies the newest revision it was handed, off the poller's path, so a
replica loading a large model keeps reporting. While the controller is away the replica serves
its last state and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from serving.control.channel import ControlChannel, PollAnswer, ReplicaReport
from serving.models.registry import Registry
from serving.models.spec import DesiredState
from serving.observe.metrics import DriftGauge

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 1.0
"""The longest a poll stays open, so statistics reach the controller at least this often."""
RETRY_S = 0.5
PROMPT_SPACING_S = 0.05
"""Prompt reports (a watched version failed) go out at most this often."""


class Follower:
    def __init__(
        self,
        channel: ControlChannel,
        registry: Registry,
        *,
        replica: str,
        node: str = "",
        poll_timeout_s: float = POLL_TIMEOUT_S,
    ) -> None:
        self._channel = channel
        self._registry = registry
        self._replica = replica
        self._node = node
        self._poll_timeout_s = poll_timeout_s
        self._known = 0
        self._flushed = 0
        self._reports = 0
        self._desired: DesiredState | None = None
        self._wanted = asyncio.Event()
        self._urgent = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.drift: list[DriftGauge] = []
        """The latest drift scores the controller sent (for this replica's metrics)."""

    async def converge(self, timeout_s: float = 600.0) -> None:
        """Apply the controller's current revision, and any that follows while applying; for a
        replica starting up, before it serves."""
        async with asyncio.timeout(timeout_s):
            state = await self._channel.current()
            while state.revision > self._registry.revision:
                await self._registry.apply(state)
                self._known = max(self._known, state.revision)
                state = await self._channel.current()
        await self._report_now()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._poll(), name="control-poll"),
            asyncio.create_task(self._apply(), name="control-apply"),
            asyncio.create_task(self._prompt(), name="control-prompt"),
        ]

    def nudge(self) -> None:
        """Report soon, not at the next regular poll: a rollout's canary failed a request."""
        self._urgent.set()

    async def _prompt(self) -> None:
        while True:
            await self._urgent.wait()
            self._urgent.clear()
            await self._report_now()
            await asyncio.sleep(PROMPT_SPACING_S)

    @property
    def alive(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def report(self) -> ReplicaReport:
        self._reports += 1
        registry = self._registry
        gauges = registry.gauges()
        drift, rows, profiled = {}, {}, set()
        for key, sampler in registry.book.samplers.items():
            if key not in gauges:
                continue
            gathered = sampler.collect()
            if gathered:
                rows[key] = gathered
            if sampler.profile is not None:
                profiled.add(key)
                drift[key] = {
                    name: [c.copy() for c in parts] for name, parts in sampler.counts.items()
                }
        return ReplicaReport(
            replica=self._replica,
            node=self._node,
            sequence=self._reports,
            known=self._known,
            applied=self._registry.revision,
            flushed=self._flushed,
            stats=self._registry.book.snapshot(),
            failures=dict(self._registry.failures),
            gauges=gauges,
            drift=drift,
            drift_rows=rows,
            profiled=frozenset(profiled),
            shadow=registry.book.shadow_snapshot(),
        )

    async def _report_now(self) -> None:
        with contextlib.suppress(Exception):
            await self._channel.poll(self.report(), 0.0)

    async def _poll(self) -> None:
        while True:
            flushing = self._flushed
            try:
                answer = await self._channel.poll(self.report(), self._poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("controller unreachable (%s); serving the last state", error)
                await asyncio.sleep(RETRY_S)
                continue
            if answer.state is not None and answer.state.revision > self._known:
                self._known = answer.state.revision
                self._desired = answer.state
                self._registry.route_by(answer.state)  # at once, even while a load runs
                self._wanted.set()
            if answer.flush > flushing:
                # The next poll, sent at once, carries counters taken after the request.
                self._flushed = answer.flush
            self._take_drift(answer)

    def _take_drift(self, answer: PollAnswer) -> None:
        samplers = self._registry.book.samplers
        for key, profile in answer.profiles.items():
            sampler = samplers.get(key)
            if sampler is not None:
                sampler.set_profile(profile)
        self.drift = answer.drift

    async def _apply(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            state = self._desired
            if state is None or state.revision <= self._registry.revision:
                continue
            try:
                await self._registry.apply(state)
            except Exception:
                logger.exception("applying revision %d failed", state.revision)
                continue
            logger.info("applied revision %d", state.revision)
            await self._report_now()
