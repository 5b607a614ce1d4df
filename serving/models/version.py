"""One loaded model version: its signature, runtime session, scheduler and statistics, and the
requests inside it, so that a swap can drain it before its session closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

import numpy as np

from serving.clock import Clock
from serving.config import ModelConfig
from serving.models.execution import Execution, Workers
from serving.models.loader import Loaded
from serving.models.scheduling import Scheduler, make_scheduler
from serving.observe.drift import DriftSampler
from serving.observe.stats import StatsWindow

logger = logging.getLogger(__name__)


class ModelVersion:
    def __init__(
        self,
        model: str,
        version: int,
        config: ModelConfig,
        loaded: Loaded,
        *,
        workers: Workers,
        clock: Clock,
        stats: StatsWindow,
        drift: DriftSampler | None = None,
        execution: Execution | None = None,
        instances: int = 1,
    ) -> None:
        self.model = model
        self.version = version
        self.config = config
        self.sha256 = loaded.sha256
        self.signature = loaded.signature
        self.runtime = loaded.runtime
        self.stats = stats
        self.drift = drift
        """Samples requests for drift detection; None: not sampled."""
        self.execution = execution or Execution()
        self.instances = instances
        """Executions that may run at once."""
        self.owns_runtime = True
        """False once a successor took over the session (a config change that keeps it)."""
        self.retired = False
        self._inside = 0
        self._idle = asyncio.Event()
        self._idle.set()
        runtime, execution_ = self.runtime, self.execution

        async def execute(inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
            elements = sum(array.size for array in inputs.values())
            return await execution_.run(workers, elements, partial(runtime.infer, inputs, names))

        def on_execution(rows: int, compute_s: float) -> None:
            stats.record_execution(rows, int(compute_s * 1e9))

        self.scheduler: Scheduler = make_scheduler(
            model,
            config,
            max_batch_size=self.signature.max_batch_size,
            output_names=self.signature.output_names,
            instances=instances,
            execute=execute,
            clock=clock,
            on_execution=on_execution,
        )

    def __repr__(self) -> str:
        return f"ModelVersion({self.model!r}, {self.version}, sha256={self.sha256[:12]})"

    @property
    def label(self) -> str:
        return str(self.version)

    @property
    def in_flight(self) -> int:
        """Requests inside: queued or running."""
        return self._inside

    def enter(self) -> bool:
        """Count a request in; False once the version is retired (route the request again)."""
        if self.retired:
            return False
        self._inside += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        self._inside -= 1
        if self._inside == 0:
            self._idle.set()

    def retire(self) -> None:
        """From now on no request enters (they route again, to whatever serves now)."""
        self.retired = True

    async def drain(self, timeout_s: float) -> None:
        """After ``retire``: wait (at most ``timeout_s``) for the requests inside, queued ones
        included, to be answered; then release the scheduler and, if it is still ours, the
        session."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        if self._inside:
            logger.warning(
                "%s version %s retired with %d requests still running after %.0f s",
                self.model, self.version, self._inside, timeout_s,
            )  # fmt: skip
        await self.scheduler.close()
        if self.owns_runtime:
            self.runtime.close()
