"""What passes between a replica and the controller, and the interface a replica calls it through.

No Ray here: ``actor.py`` implements :class:`ControlChannel` over a Ray actor handle, and
:class:`LocalChannel` over an in-process controller (one replica without Ray, and tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from serving.errors import ControlPlaneUnavailableError, ServingError
from serving.models.spec import DesiredState
from serving.observe.drift import Counts, Profile, Raw
from serving.observe.metrics import DriftGauge
from serving.observe.stats import Key, ShadowKey, ShadowStats, StatsWindow
from serving.traffic.rollout import Plan
from serving.traffic.routing import TrafficChange

CONTROL_TIMEOUT_S = 10.0
"""Reads that need the controller (statistics, the index) give up after this long."""
T = TypeVar("T")

if TYPE_CHECKING:
    from serving.control.controller import Controller


@dataclass
class ReplicaReport:
    """What a replica tells the controller on every poll."""

    replica: str
    node: str = ""
    sequence: int = 0
    """Grows with every report a replica makes: reports can arrive out of order (a long poll
    and a prompt report are in flight together), and an older one must not undo a newer."""
    known: int = 0
    """The newest revision it has received."""
    applied: int = 0
    """The newest revision it has applied in full."""
    flushed: int = 0
    """The newest statistics flush request its ``stats`` answer."""
    stats: dict[Key, StatsWindow] = field(default_factory=dict)
    """Its cumulative windows, taken when the poll was sent."""
    failures: dict[Key, tuple[str, str]] = field(default_factory=dict)
    """Versions of the applied revision it could not load: (sha256, reason)."""
    gauges: dict[Key, tuple[int, int]] = field(default_factory=dict)
    """Per version it serves: requests in flight, requests queued."""
    drift: dict[Key, Counts] = field(default_factory=dict)
    """Cumulative drift bin counts of the versions it holds a profile for."""
    drift_rows: dict[Key, Raw] = field(default_factory=dict)
    """Rows sampled since its last report, of versions without a profile."""
    profiled: frozenset[Key] = frozenset()
    """Versions it holds a drift profile for."""
    shadow: dict[ShadowKey, ShadowStats] = field(default_factory=dict)
    """Its cumulative shadow comparisons."""


@dataclass(frozen=True)
class PollAnswer:
    state: DesiredState | None
    """A revision newer than the replica knows, or None."""
    flush: int
    """The newest statistics flush request: report again at once if it is newer than yours."""
    profiles: dict[Key, Profile | None] = field(default_factory=dict)
    """Drift profiles to take (or, None, to drop)."""
    drift: list[DriftGauge] = field(default_factory=list)
    """The latest drift scores, for the replica's metrics."""


class ControlChannel(Protocol):
    async def current(self) -> DesiredState: ...

    async def poll(self, report: ReplicaReport, timeout_s: float) -> PollAnswer: ...

    async def load(self, name: str, override: str | None) -> None: ...

    async def unload(self, name: str) -> None: ...

    async def index(self, ready_only: bool) -> list[dict[str, Any]]: ...

    async def statistics(self) -> dict[Key, StatsWindow]: ...

    async def summary(self) -> dict[str, Any]: ...

    async def traffic(self, name: str) -> dict[str, Any]: ...

    async def set_traffic(self, name: str, change: TrafficChange) -> dict[str, Any]: ...

    async def start_rollout(
        self, plan: Plan, evaluation: dict[str, Any] | None
    ) -> dict[str, Any]: ...

    async def rollout(self, name: str) -> dict[str, Any]: ...

    async def rollout_action(self, name: str, action: str) -> dict[str, Any]: ...


async def ask(what: str, call: Awaitable[T]) -> T:
    """Await a read that needs the controller: its own errors pass, anything else (it is
    away, or slow) is UNAVAILABLE after ``CONTROL_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(CONTROL_TIMEOUT_S):
            return await call
    except ServingError:
        raise
    except Exception as error:
        raise ControlPlaneUnavailableError(what=what, detail=str(error) or "timed out") from None


class LocalChannel:
    """Calls a :class:`Controller` in this process, on this event loop."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    async def current(self) -> DesiredState:
        return self.controller.state

    async def poll(self, report: ReplicaReport, timeout_s: float) -> PollAnswer:
        return await self.controller.poll(report, timeout_s)

    async def load(self, name: str, override: str | None) -> None:
        await self.controller.load(name, override)

    async def unload(self, name: str) -> None:
        await self.controller.unload(name)

    async def index(self, ready_only: bool) -> list[dict[str, Any]]:
        return self.controller.index(ready_only)

    async def statistics(self) -> dict[Key, StatsWindow]:
        return await self.controller.statistics()

    async def summary(self) -> dict[str, Any]:
        return await self.controller.summary()

    async def traffic(self, name: str) -> dict[str, Any]:
        return self.controller.desk.traffic(name)

    async def set_traffic(self, name: str, change: TrafficChange) -> dict[str, Any]:
        return await self.controller.desk.set_traffic(name, change)

    async def start_rollout(self, plan: Plan, evaluation: dict[str, Any] | None) -> dict[str, Any]:
        return await self.controller.desk.start(plan, evaluation)

    async def rollout(self, name: str) -> dict[str, Any]:
        return self.controller.desk.status(name)

    async def rollout_action(self, name: str, action: str) -> dict[str, Any]:
        return await self.controller.desk.act(name, action)
