"""The controller as a Ray actor: named and detached, one per application, restarted by Ray if
it dies, its state kept in Ray's GCS key-value store (and in a state file when one is given).

:class:`RayChannel` is the replicas' (and the CLI's) way to call it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.experimental import internal_kv

from serving.control.channel import PollAnswer, ReplicaReport
from serving.control.controller import Controller, ControlSettings
from serving.control.store import FileStore
from serving.errors import ServingError
from serving.models.spec import DesiredState
from serving.observe.stats import Key, StatsWindow
from serving.traffic.rollout import Plan
from serving.traffic.routing import TrafficChange

logger = logging.getLogger(__name__)

NAMESPACE = "serving"
HEAD_RESOURCE = "node:__internal_head__"
"""The resource only Ray's head node has."""
RETRY_S = 10.0
"""How long calls other than polls retry a controller that Ray is restarting."""
KV_NAMESPACE = b"serving"


def controller_name(app: str) -> str:
    return f"controller:{app}"


class KVStore:
    """The application's state in Ray's GCS key-value store: it outlives the controller actor
    (not the cluster, unless GCS is made fault tolerant)."""

    def __init__(self, app: str) -> None:
        self._key = f"state:{app}".encode()

    def load(self) -> dict[str, Any] | None:
        raw = internal_kv._internal_kv_get(self._key, namespace=KV_NAMESPACE)
        return None if raw is None else json.loads(raw)  # type: ignore[no-any-return]

    def save(self, document: dict[str, Any]) -> None:
        internal_kv._internal_kv_put(
            self._key, json.dumps(document).encode(), overwrite=True, namespace=KV_NAMESPACE
        )

    def delete(self) -> None:
        internal_kv._internal_kv_del(self._key, namespace=KV_NAMESPACE)


@ray.remote(num_cpus=0, max_restarts=-1)
class ControllerActor:
    """Hosts one :class:`Controller`; every method waits for it to have started."""

    def __init__(self, app: str, settings: ControlSettings, state_file: str | None) -> None:
        self._app = app
        self._settings = settings
        self._state_file = state_file
        self._controller: Controller | None = None
        self._starting: asyncio.Future[None] | None = None
        self._configuring = asyncio.Lock()

    def _new(self, settings: ControlSettings, state_file: str | None) -> Controller:
        return Controller(
            settings,
            live_store=KVStore(self._app),
            durable_store=FileStore(Path(state_file)) if state_file else None,
        )

    async def _started(self) -> Controller:
        if self._controller is None:
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._start())
            await asyncio.shield(self._starting)
        assert self._controller is not None
        return self._controller

    async def _start(self) -> None:
        controller = self._new(self._settings, self._state_file)
        await controller.start()
        self._controller = controller

    async def configure(self, settings: ControlSettings, state_file: str | None) -> int:
        """Take new settings (a redeploy), planning the state again only when they differ.
        Returns the current revision."""
        async with self._configuring:  # replicas starting together all configure
            controller = await self._started()
            if settings != self._settings or state_file != self._state_file:
                logger.info("controller settings changed; planning the state again")
                await controller.stop()
                self._settings, self._state_file = settings, state_file
                fresh = self._new(settings, state_file)
                await fresh.start(revision_floor=controller.state.revision)
                self._controller = controller = fresh
            return controller.state.revision

    async def current(self) -> DesiredState:
        return (await self._started()).state

    async def poll(self, report: ReplicaReport, timeout_s: float) -> PollAnswer:
        return await (await self._started()).poll(report, timeout_s)

    async def load(self, name: str, override: str | None) -> None:
        await (await self._started()).load(name, override)

    async def unload(self, name: str) -> None:
        await (await self._started()).unload(name)

    async def index(self, ready_only: bool) -> list[dict[str, Any]]:
        return (await self._started()).index(ready_only)

    async def statistics(self) -> dict[Key, StatsWindow]:
        return await (await self._started()).statistics()

    async def summary(self) -> dict[str, Any]:
        return await (await self._started()).summary()

    async def note_autoscaling(self, reading: dict[str, Any]) -> None:
        (await self._started()).note_autoscaling(reading)

    async def traffic(self, name: str) -> dict[str, Any]:
        return (await self._started()).desk.traffic(name)

    async def set_traffic(self, name: str, change: TrafficChange) -> dict[str, Any]:
        return await (await self._started()).desk.set_traffic(name, change)

    async def start_rollout(self, plan: Plan, evaluation: dict[str, Any] | None) -> dict[str, Any]:
        return await (await self._started()).desk.start(plan, evaluation)

    async def rollout(self, name: str) -> dict[str, Any]:
        return (await self._started()).desk.status(name)

    async def rollout_action(self, name: str, action: str) -> dict[str, Any]:
        return await (await self._started()).desk.act(name, action)

    async def timings(self) -> dict[int, tuple[float, dict[str, float]]]:
        return (await self._started()).timings()

    async def replicas(self) -> list[ReplicaReport]:
        return (await self._started()).replicas()


def controller_for(
    app: str, settings: ControlSettings, state_file: Path | None
) -> ray.actor.ActorHandle[Any]:
    """The application's controller, created (on the head node, where it can) if it does not
    exist yet."""
    return ControllerActor.options(  # type: ignore[attr-defined,no-any-return]
        name=controller_name(app),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_concurrency=10_000,  # every replica's long poll is one call in flight
        # On the head node, as Ray Serve's own controller: losing a worker node must not take
        # the control plane with it (a soft affinity spilled to a worker on a busy head).
        resources={HEAD_RESOURCE: 0.001},
    ).remote(app, settings, None if state_file is None else str(state_file))


def existing_controller(app: str) -> ray.actor.ActorHandle[Any] | None:
    try:
        return ray.get_actor(controller_name(app), namespace=NAMESPACE)
    except ValueError:
        return None


def forget(app: str) -> None:
    """Stop the application's controller and drop its state from the cluster (a state file
    stays, for the next start)."""
    handle = existing_controller(app)
    if handle is not None:
        ray.kill(handle, no_restart=True)
    KVStore(app).delete()


class RayChannel:
    """The control channel over the controller actor's handle. Errors the controller raises
    for the caller (``ServingError``) arrive as themselves."""

    def __init__(self, handle: ray.actor.ActorHandle[Any]) -> None:
        self._handle = handle

    async def _call(self, method: str, *args: Any, retry_s: float = RETRY_S) -> Any:
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return await getattr(self._handle, method).remote(*args)
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, ServingError):
                    raise error.cause from None
                raise
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)  # Ray is restarting it: the same handle reaches it

    async def current(self) -> DesiredState:
        state: DesiredState = await self._call("current")
        return state

    async def poll(self, report: ReplicaReport, timeout_s: float) -> PollAnswer:
        # The follower retries polls itself, and must keep its own pace while it does.
        answer: PollAnswer = await self._call("poll", report, timeout_s, retry_s=0)
        return answer

    async def load(self, name: str, override: str | None) -> None:
        await self._call("load", name, override)

    async def unload(self, name: str) -> None:
        await self._call("unload", name)

    async def index(self, ready_only: bool) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._call("index", ready_only)
        return rows

    async def statistics(self) -> dict[Key, StatsWindow]:
        totals: dict[Key, StatsWindow] = await self._call("statistics")
        return totals

    async def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = await self._call("summary")
        return summary

    async def traffic(self, name: str) -> dict[str, Any]:
        document: dict[str, Any] = await self._call("traffic", name)
        return document

    async def set_traffic(self, name: str, change: TrafficChange) -> dict[str, Any]:
        document: dict[str, Any] = await self._call("set_traffic", name, change)
        return document

    async def start_rollout(self, plan: Plan, evaluation: dict[str, Any] | None) -> dict[str, Any]:
        document: dict[str, Any] = await self._call("start_rollout", plan, evaluation)
        return document

    async def rollout(self, name: str) -> dict[str, Any]:
        document: dict[str, Any] = await self._call("rollout", name)
        return document

    async def rollout_action(self, name: str, action: str) -> dict[str, Any]:
        document: dict[str, Any] = await self._call("rollout_action", name, action)
        return document
