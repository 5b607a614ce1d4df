"""The model versions a replica hosts: loading, state, default version, inference."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from serving.batching import Batcher, BatcherOptions, BatchRecord
from serving.config import ModelConfig
from serving.errors import (
    DeadlineExceededError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServingError,
)
from serving.execution import DEFAULT_INLINE_BELOW_S, Execution, Workers
from serving.protocol.datatypes import numpy_dtype
from serving.repository import ModelSource, scan, sha256_of
from serving.runtimes.base import Runtime
from serving.signature import Signature, SignatureError, reconcile, validate
from serving.stats import ModelStatistics
from serving.types import InferenceRequest, InferenceResponse, Tensor

logger = logging.getLogger(__name__)

RuntimeFactory = Callable[[Path, ModelConfig], Runtime]


class State(enum.Enum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


def request_timeout_us(request: InferenceRequest) -> int | None:
    """The request's ``timeout`` parameter: microseconds, as Triton and tritonclient use it."""
    value = request.parameters.get("timeout")
    if isinstance(value, bool) or not isinstance(value, int | None) or (value or 0) < 0:
        raise InvalidInputError(
            f"parameter 'timeout' must be a non-negative integer (µs), got {value!r}"
        )
    return value or None  # 0 means no timeout, as in Triton


@dataclass
class ModelVersion:
    model: str
    version: int
    config: ModelConfig
    state: State
    reason: str = ""
    sha256: str | None = None
    signature: Signature | None = None
    runtime: Runtime | None = None
    stats: ModelStatistics = field(default_factory=ModelStatistics)
    execution: Execution = field(default_factory=Execution)
    _slots: asyncio.Semaphore | None = None
    _batcher: Batcher | None = None

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def queues(self) -> bool:
        """Whether requests wait in a batching queue."""
        return self.config.dynamic_batching is not None

    @property
    def would_queue(self) -> bool:
        """Whether a request arriving now would wait in the batching queue (rather than run at
        once, the batcher being idle and told not to wait)."""
        if not self.queues:
            return False
        return self._batcher is None or not self._batcher.runs_at_once

    async def infer(self, request: InferenceRequest, workers: Workers) -> InferenceResponse:
        if self.runtime is None or self.signature is None:
            raise ModelNotReadyError(
                model=self.model, version=str(self.version), reason=self.reason
            )
        start = time.perf_counter_ns()
        try:
            names = validate(request, self.signature, self.model)
            timeout_us = request_timeout_us(request)
            feed = {t.name: t.data for t in request.inputs}
            rows = request.inputs[0].shape[0] if self.signature.max_batch_size > 0 else 1
            decoded = time.perf_counter_ns()
            if self.queues:
                arrays, queue_s, compute_s = await self._infer_batched(
                    feed, names, timeout_us, workers
                )
            else:
                arrays, queue_s, compute_s = await self._infer_direct(
                    feed, names, rows, timeout_us, workers, start
                )
        except ServingError:
            self.stats.record_failure(time.perf_counter_ns() - start)
            raise
        except Exception:
            self.stats.record_failure(time.perf_counter_ns() - start)
            logger.exception("inference failed in %s version %s", self.model, self.version)
            raise InternalError(
                f"inference failed in model '{self.model}' version {self.version}"
            ) from None
        types = self.signature.output_types
        outputs = [Tensor(n, types[n], a) for n, a in zip(names, arrays, strict=True)]
        finished = time.perf_counter_ns()
        self.stats.compute_input.add(decoded - start)
        self.stats.queue.add(int(queue_s * 1e9))
        self.stats.compute_infer.add(int(compute_s * 1e9))
        self.stats.compute_output.add(max(0, finished - decoded - int((queue_s + compute_s) * 1e9)))
        self.stats.record_success(rows, finished - start)
        return InferenceResponse(
            model_name=self.model,
            model_version=str(self.version),
            outputs=outputs,
            id=request.id,
        )

    async def _infer_direct(
        self,
        feed: dict[str, np.ndarray],
        names: list[str],
        rows: int,
        timeout_us: int | None,
        workers: Workers,
        start_ns: int,
    ) -> tuple[list[np.ndarray], float, float]:
        assert self.runtime is not None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.instance_count)
        queued = time.perf_counter_ns()
        async with self._slots:
            began = time.perf_counter_ns()
            if timeout_us is not None and (began - start_ns) > timeout_us * 1000:
                raise DeadlineExceededError(timeout_ms=timeout_us / 1000)
            run = partial(self.runtime.infer, feed, names)
            arrays = await self.execution.run(workers, rows, run)
            done = time.perf_counter_ns()
        self.stats.record_execution(rows, done - began)
        return arrays, (began - queued) / 1e9, (done - began) / 1e9

    async def _infer_batched(
        self,
        feed: dict[str, np.ndarray],
        names: list[str],
        timeout_us: int | None,
        workers: Workers,
    ) -> tuple[list[np.ndarray], float, float]:
        batcher = self._batcher or self._start_batcher(workers)
        timeout_s = None if timeout_us is None else timeout_us / 1e6
        outcome = await batcher.submit(feed, timeout_s)
        assert self.signature is not None
        index = self.signature.output_index
        return [outcome.outputs[index[n]] for n in names], outcome.queue_s, outcome.compute_s

    def _start_batcher(self, workers: Workers) -> Batcher:
        runtime, signature, batching = self.runtime, self.signature, self.config.dynamic_batching
        assert runtime is not None and signature is not None and batching is not None
        all_outputs = signature.output_names

        async def execute(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
            rows = len(next(iter(inputs.values())))
            run = partial(runtime.infer, inputs, all_outputs)
            return await self.execution.run(workers, rows, run)

        def on_batch(record: BatchRecord) -> None:
            self.stats.record_execution(record.rows, int(record.compute_s * 1e9))

        options = BatcherOptions(
            max_batch_size=signature.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_ms / 1000,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            max_queue_size=batching.max_queue_size,
            default_timeout_s=None
            if batching.default_timeout_ms is None
            else batching.default_timeout_ms / 1000,
            max_concurrent_batches=self.config.instance_count,
        )
        self._batcher = Batcher(execute, options, name=self.model, on_batch=on_batch)
        return self._batcher

    async def drain(self) -> None:
        """Stop batching: queued requests are refused, running batches finish."""
        if self._batcher is not None:
            await self._batcher.close()


@dataclass
class ModelEntry:
    name: str
    config: ModelConfig
    versions: dict[int, ModelVersion]
    error: str | None = None

    @property
    def default(self) -> ModelVersion | None:
        ready = [v for v in self.versions.values() if v.ready]
        return max(ready, key=lambda v: v.version) if ready else None


class ModelHost:
    """Every model of a repository, loaded into this process."""

    def __init__(
        self,
        entries: list[ModelEntry],
        executor: Executor,
        *,
        inline_below_s: float = DEFAULT_INLINE_BELOW_S,
    ) -> None:
        self._entries = {e.name: e for e in entries}
        self.workers = Workers(executor, inline_below_s)

    @classmethod
    def load(
        cls,
        repository: Path,
        factory: RuntimeFactory,
        executor: Executor,
        *,
        inline_below_s: float = DEFAULT_INLINE_BELOW_S,
    ) -> ModelHost:
        entries = [_load_model(source, repository, factory) for source in scan(repository)]
        for entry in entries:
            for v in entry.versions.values():
                if not v.ready:
                    logger.error("%s version %s is UNAVAILABLE: %s", v.model, v.version, v.reason)
            if entry.error:
                logger.error("%s is UNAVAILABLE: %s", entry.name, entry.error)
        return cls(entries, executor, inline_below_s=inline_below_s)

    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise ModelNotFoundError(model=name, known=sorted(self._entries)) from None

    def resolve(self, name: str, version: str | None) -> ModelVersion:
        """The version to serve: the one asked for, else the model's highest ready version."""
        entry = self.entry(name)
        if version is None or version == "":
            default = entry.default
            if default is None:
                reason = entry.error or "; ".join(
                    f"version {v.version}: {v.reason}" for v in entry.versions.values()
                )
                raise ModelNotReadyError(model=name, version=None, reason=reason)
            return default
        known = [str(v) for v in sorted(entry.versions)]
        if not version.isdigit() or int(version) not in entry.versions:
            raise ModelNotFoundError(model=name, version=version, known=known)
        return entry.versions[int(version)]

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        target = self.resolve(request.model_name, request.model_version)
        return await target.infer(request, self.workers)

    async def drain(self) -> None:
        for entry in self._entries.values():
            for version in entry.versions.values():
                await version.drain()

    def close(self) -> None:
        for entry in self._entries.values():
            for version in entry.versions.values():
                if version.runtime is not None:
                    version.runtime.close()


def _load_model(source: ModelSource, repository: Path, factory: RuntimeFactory) -> ModelEntry:
    versions = {
        v.version: _load_version(source.name, v.version, v.path, source.config, repository, factory)
        for v in source.versions
    }
    return ModelEntry(source.name, source.config, versions, source.error)


def _load_version(
    model: str,
    version: int,
    path: Path,
    config: ModelConfig,
    repository: Path,
    factory: RuntimeFactory,
) -> ModelVersion:
    shown = str(path.relative_to(repository))

    def unavailable(reason: str, sha: str | None = None) -> ModelVersion:
        return ModelVersion(model, version, config, State.UNAVAILABLE, reason, sha)

    if not path.is_file():
        return unavailable(f"model file {shown} not found")
    sha = sha256_of(path)
    try:
        runtime = factory(path, config)
    except Exception as error:
        message = str(error).replace(str(path), shown).strip().splitlines()[0]
        return unavailable(f"cannot load {shown}: {message}", sha)
    try:
        signature = reconcile(config, runtime.inputs, runtime.outputs)
        warm_up(runtime, signature)
    except SignatureError as error:
        runtime.close()
        return unavailable(f"config does not match {shown}: {error}", sha)
    except Exception as error:
        runtime.close()
        return unavailable(f"warm-up inference on {shown} failed: {error}", sha)
    return ModelVersion(model, version, config, State.READY, "", sha, signature, runtime)


def sample_inputs(signature: Signature) -> dict[str, np.ndarray]:
    """Zeros of the right type, free dims set to 1: enough to run the graph once."""
    sample = {}
    for tensor in signature.inputs:
        shape = [1 if d == -1 else d for d in signature.full_shape(tensor)]
        if tensor.datatype == "BYTES":
            array = np.full(shape, b"", dtype=object)
        else:
            array = np.zeros(shape, dtype=numpy_dtype(tensor.datatype))
        sample[tensor.name] = array
    return sample


def warm_up(runtime: Runtime, signature: Signature) -> None:
    runtime.infer(sample_inputs(signature), signature.output_names)
