"""One server replica: its registry of model versions, the dataplane over it, the follower that
keeps it on the controller's revision, and its listeners. Nothing here imports Ray; the Ray
Serve deployment (``control/cluster.py``) hosts one of these per replica actor."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from serving.clock import MONOTONIC, Clock
from serving.config import ModelConfig, ServerConfig
from serving.control.channel import ControlChannel
from serving.control.follower import Follower
from serving.dataplane import DataPlane
from serving.models.execution import Workers
from serving.models.loader import RuntimeFactory
from serving.models.registry import Registry
from serving.models.runtimes.base import ModelFile, Runtime
from serving.observe.logs import AccessLog
from serving.observe.node import NodeMetrics, ReplicaSnapshot, metrics_directory
from serving.observe.stats import StatsBook
from serving.transport.servers import Listeners

logger = logging.getLogger(__name__)

DRAIN_S = 5.0
"""How long a stopping replica waits for its HTTP clients to move to new connections."""
SHUTDOWN_S = 26.0
"""The whole of a replica's stop, from not-ready to closed sessions: inside Ray Serve's
graceful-shutdown window (``graceful_shutdown_timeout_s``, 30 s, which starts after Serve's own
2 s wait), so that Ray never kills a replica while it still answers requests. With the largest
``deregister_s`` (15 s) and the connection drain (``DRAIN_S``), 6 s remain for the requests
inside to finish."""
INFERENCE_THREADS = 16
"""Worker threads for executions that leave the event loop. Idle threads cost nothing;
executions beyond the pool's size would queue behind it."""


def onnx_factory(config: ServerConfig) -> RuntimeFactory:
    """ONNX Runtime sessions with ``config.threads_per_instance`` threads each."""
    from serving.models.runtimes.onnx import GpuSettings, ONNXRuntime, SessionOptions

    def open_session(source: ModelFile, model: ModelConfig) -> Runtime:
        options = SessionOptions(intra_op_threads=config.threads_per_instance(model))
        return ONNXRuntime(source, providers=model.execution_providers, options=options,
                           gpu=GpuSettings.of(model))  # fmt: skip

    return open_session


def normal_priority() -> None:
    """Run the calling thread, and the threads it starts, at nice 0 where it runs nicer.

    Ray starts workers at nice 15 unless its nodes set ``RAY_worker_niceness=0`` (the embedded
    Ray does). Raising priority needs CAP_SYS_NICE; without it the replica says so and carries on.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)  # on Linux: this thread
    except PermissionError:
        logger.warning(
            "replica runs at nice %d and may not lower it; any busy process on the node will "
            "take the CPU from it. Start the Ray nodes with RAY_worker_niceness=0.",
            current,
        )


class Replica:
    def __init__(
        self,
        config: ServerConfig,
        channel: ControlChannel,
        *,
        replica: str,
        node: str = "",
        factory: RuntimeFactory | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.config = config
        executor = ThreadPoolExecutor(INFERENCE_THREADS, thread_name_prefix="infer")
        self.registry = Registry(
            config.repository,
            factory or onnx_factory(config),
            workers=Workers(executor, config.inline_below_us / 1e6),
            clock=clock,
            instances=config.instances,
            book=StatsBook(config.drift_settings()),
        )
        self.name = replica
        self.follower = Follower(channel, self.registry, replica=replica, node=node)
        served_by = f"{replica}@{node}" if node else replica
        self.dataplane = DataPlane(
            self.registry,
            channel,
            clock=clock,
            access_log=AccessLog(enabled=config.access_log, served_by=served_by),
        )
        self.dataplane.urgent = self.follower.nudge
        self._drained: asyncio.Future[None] | None = None
        self._draining: asyncio.Future[None] | None = None
        self.dataplane.on_drain = self._begin_drain
        self.metrics: NodeMetrics | None = None
        if config.metrics_port is not None:
            self.metrics = NodeMetrics(
                metrics_directory(config.metrics_port, config.run or f"pid{os.getpid()}"),
                self.snapshot,
                triton_aliases=config.metrics_triton,
                drift=lambda: self.follower.drift,
                traffic=lambda: self.registry.traffic,
            )
        self.listeners = Listeners(
            config, self.dataplane, served_by=served_by, metrics=self.metrics
        )

    def snapshot(self) -> ReplicaSnapshot:
        """This replica's counters (copies) and gauges, for its node's metrics."""
        registry = self.registry
        gauges = registry.gauges()
        return ReplicaSnapshot(
            pid=os.getpid(),
            replica=self.name,
            ready=self.dataplane.ready(),
            windows=registry.book.snapshot(),
            in_flight={key: inside for key, (inside, _) in gauges.items()},
            queued={key: queued for key, (_, queued) in gauges.items()},
            loaded=list(gauges),
            loads={model: list(seconds) for model, seconds in registry.book.loads.items()},
            shadow=registry.book.shadow_snapshot(),
            auth_failures=dict(self.listeners.auth.failures),
        )

    async def start(self) -> None:
        """Serve the controller's current revision, then listen."""
        await self.follower.converge()
        self.follower.start()
        if self.metrics is not None:
            self.metrics.start()
        await self.listeners.start()
        self.dataplane.set_ready(True)

    async def stop(self) -> None:
        """Leave without failing a request: not ready first (load balancers stop sending),
        clients moved off this replica's connections, the requests inside answered, then the
        sessions closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_S
        await self.drain()
        # The requests inside get what is left of the window, less a moment to close.
        await self.listeners.stop(timeout_s=max(1.0, deadline - loop.time() - 1.0))
        if self.metrics is not None:
            await self.metrics.stop()
        await self.follower.stop()
        await self.dataplane.mirror.close()
        await self.registry.close(timeout_s=max(0.5, deadline - loop.time()))

    async def drain(self) -> None:
        """Not ready, then clients moved off this replica's connections (once: a drain asked
        for before the stop is not done twice)."""
        if self._drained is None:
            self.dataplane.set_ready(False)
            self._drained = asyncio.ensure_future(
                self.listeners.drain(self.config.deregister_s, DRAIN_S, SHUTDOWN_S)
            )
        await asyncio.shield(self._drained)

    def _begin_drain(self) -> None:
        self._draining = asyncio.ensure_future(self.drain())

    def in_flight(self) -> int:
        """Requests inside this replica's model versions (queued or running)."""
        return sum(inside for inside, _ in self.registry.gauges().values())

    @property
    def alive(self) -> bool:
        """False once drained: Ray Serve's health check then replaces the replica."""
        drained = self._drained is not None and self._drained.done()
        return self.listeners.alive and self.follower.alive and not drained
