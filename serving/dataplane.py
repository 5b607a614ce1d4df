"""The one request pipeline both transports call: route → validate → schedule → execute → record.

Also health, metadata, config, statistics, the repository index and model control. Returns
plain dicts in the shape of the v2 JSON documents (the gRPC adapter converts them). Rules that
concern the request rather than its wire form live here once: version strings are parsed by
``parse_version``, model control is refused to callers not on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any

from serving import __version__
from serving.clock import MONOTONIC, Clock
from serving.config import LatestPolicy, SpecificPolicy, TensorConfig
from serving.control.channel import ControlChannel, ask
from serving.errors import (
    InternalError,
    InvalidInputError,
    ModelNotReadyError,
    ServingError,
)
from serving.models.registry import Registry
from serving.models.repository import parse_version
from serving.models.signature import Signature, validate
from serving.models.version import ModelVersion
from serving.observe.logs import AccessLog, Trace
from serving.observe.stats import StatsWindow
from serving.protocol.datatypes import to_triton
from serving.status import http_status
from serving.traffic.admin import TrafficAdmin
from serving.traffic.routing import ROUTING_PARAMETER
from serving.traffic.shadow import Copy, Mirror
from serving.types import InferenceRequest, InferenceResponse, Tensor

logger = logging.getLogger(__name__)

SERVER_NAME = "serving"
EXTENSIONS = (
    "binary_tensor_data",
    "classification_not_supported",
    "model_configuration",
    "statistics",
    "model_repository",
    "model_repository(unload_dependents)",
)


def request_timeout_s(request: InferenceRequest) -> float | None:
    """The request's ``timeout`` parameter (microseconds, as Triton and tritonclient use it)."""
    value = request.parameters.get("timeout")
    if isinstance(value, bool) or not isinstance(value, int | None) or (value or 0) < 0:
        raise InvalidInputError(
            f"parameter 'timeout' must be a non-negative integer (µs), got {value!r}"
        )
    return value / 1e6 if value else None  # 0 means no timeout, as in Triton


def routing_parameter(request: InferenceRequest) -> str | None:
    """The request's ``routing_key`` parameter (a string, or an integer taken as one)."""
    value = request.parameters.get(ROUTING_PARAMETER)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInputError(
            f"parameter '{ROUTING_PARAMETER}' must be a string, got {type(value).__name__}"
        )
    return str(value)


CLIENT_CLOSED = 499
"""The status recorded for a request whose client left before its answer (nginx's code)."""


class Call:
    """One inference request, observed from its arrival to its answer: a context manager
    around everything a transport does for it (routing, reading and decoding the body,
    inference, encoding). On exit it is recorded once, in its model version's window (or, when
    it could not be routed, in the model's or the server's), with the status it was answered
    with, and written to the access log when that is on."""

    __slots__ = (
        "_dataplane", "infer_ns", "input_ns", "model", "protocol", "queue_ns", "rows",
        "started", "status", "target", "trace", "version",
    )  # fmt: skip

    def __init__(
        self,
        dataplane: DataPlane,
        protocol: str,
        model: str,
        version: str | None,
        trace: Trace | None,
    ) -> None:
        self._dataplane = dataplane
        self.protocol = protocol
        self.model = model
        self.version = version
        self.trace = trace
        self.target: ModelVersion | None = None
        self.status: int | None = None
        """Set by a transport that answers without raising (a client that left)."""
        self.rows = 0
        self.input_ns = self.queue_ns = self.infer_ns = 0
        self.started = dataplane._clock.now()

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, asyncio.CancelledError):
            status = CLIENT_CLOSED
        elif isinstance(error, ServingError):
            status = http_status(error.code)
        elif error is not None:
            status = 500
        else:
            status = self.status or 200
        self._dataplane._record(self, status, error)


class DataPlane:
    def __init__(
        self,
        registry: Registry,
        control: ControlChannel,
        *,
        clock: Clock = MONOTONIC,
        access_log: AccessLog | None = None,
    ) -> None:
        self.registry = registry
        self._control = control
        self._clock = clock
        self._ready = False
        self.access_log = access_log or AccessLog(enabled=False)
        self.urgent: Callable[[], None] = lambda: None
        """Called when a version under watch (a rollout's canary) fails a request: the
        replica reports at once instead of at its next regular report."""
        self.on_drain: Callable[[], None] = lambda: None
        """Asked to drain (``POST /-/drain``, a Kubernetes preStop hook): the replica stops
        taking clients and leaves (Ray Serve replaces it)."""
        self.mirror = Mirror(on_error=lambda: self.urgent())
        self.traffic = TrafficAdmin(registry, control)
        """Traffic tables and rollouts (admin calls)."""

    # -- health and metadata -------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once the replica serves the current revision; not while it shuts down."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def drain(self) -> dict[str, Any]:
        """Start this replica's drain (the transports take it from loopback only): not ready
        at once, clients moved off, then replaced."""
        self.on_drain()
        return {"draining": True}

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the model (or version) serves; an unknown one raises ModelNotFoundError."""
        try:
            self.registry.resolve(name, parse_version(version))
        except ModelNotReadyError:
            return False
        return True

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        target = self.require(name, version)
        entry = self.registry.entry(name)
        signature = target.signature
        labels = target.config.labels
        placement = self._placement(target)
        return {
            "name": name,
            "versions": [str(v) for v in sorted(entry.versions)] if not version else [target.label],
            "platform": target.config.platform,
            "inputs": [_v2_tensor(t, signature) for t in signature.inputs],
            "outputs": [_v2_tensor(t, signature) for t in signature.outputs],
            "parameters": {**placement, **labels, "sha256": target.sha256}
            if version
            else {**placement, **labels},
        }

    @staticmethod
    def _placement(target: ModelVersion) -> dict[str, str]:
        """Where a version runs: its providers, and why not on the ones asked for first."""
        runtime = target.runtime
        placed = {"execution_providers": ",".join(runtime.providers)}
        fallback = getattr(runtime, "fallback", None)
        if fallback:
            placed["execution_fallback"] = fallback
        graphs = getattr(runtime, "cuda_graphs", None)
        if graphs:
            placed["cuda_graphs"] = graphs
        return placed

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration (the JSON form of ``inference.ModelConfig``)."""
        target = self.require(name, version)
        signature = target.signature
        config = target.config
        policy: dict[str, Any]
        if isinstance(config.version_policy, LatestPolicy):
            policy = {"latest": {"num_versions": config.version_policy.latest}}
        elif isinstance(config.version_policy, SpecificPolicy):
            policy = {"specific": {"versions": [str(v) for v in config.version_policy.specific]}}
        else:
            policy = {"all": {}}
        providers = target.runtime.providers
        kind = "KIND_CPU" if providers and providers[0] == "CPUExecutionProvider" else "KIND_GPU"
        parameters = {k: {"string_value": v} for k, v in config.labels.items()}
        parameters["sha256"] = {"string_value": target.sha256}
        for key, value in self._placement(target).items():
            parameters[key] = {"string_value": value}
        document: dict[str, Any] = {
            "name": name,
            "platform": config.platform,
            "backend": "onnxruntime",
            "version_policy": policy,
            "max_batch_size": signature.max_batch_size,
            "input": [_triton_tensor(t) for t in signature.inputs],
            "output": [_triton_tensor(t) for t in signature.outputs],
            "instance_group": [{"name": name, "count": target.instances, "kind": kind}],
            "default_model_filename": config.model_filename,
            "parameters": parameters,
        }
        batching = config.dynamic_batching
        if batching is not None:
            # As Triton prints it: 64-bit fields as JSON numbers, an empty preferred list
            # normalized to [max_batch_size] (the same batches form either way).
            document["dynamic_batching"] = {
                "preferred_batch_size": list(batching.preferred_batch_sizes)
                or [signature.max_batch_size],
                "max_queue_delay_microseconds": round(batching.max_queue_delay_ms * 1000),
                "preserve_ordering": False,
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": round(
                        (batching.default_timeout_ms or 0) * 1000
                    ),
                    "allow_timeout_override": True,
                    "max_queue_size": batching.max_queue_size,
                },
            }
        return document

    def require(self, name: str, version: str | None, key: str | None = None) -> ModelVersion:
        """The ready version that serves ``name``/``version``, or the error to answer with;
        checked before a request's body is read. A request that names no version goes where
        the model's traffic table sends it (by its routing ``key``, if it has one)."""
        number = parse_version(version)
        if number is None:
            policy = self.registry.traffic.get(name)
            if policy is not None:
                return self.registry.split(name, policy, key, random.random())
        return self.registry.resolve(name, number)

    # -- inference -----------------------------------------------------------------------------

    def route(self, request: InferenceRequest, key: str | None = None) -> ModelVersion:
        if key is None and request.model_version is None:
            key = routing_parameter(request)
        return self.require(request.model_name, request.model_version, key)

    def observe(
        self, protocol: str, model: str, version: str | None, trace: Trace | None = None
    ) -> Call:
        """Open the record of one inference request (use it as a context manager)."""
        return Call(self, protocol, model, version, trace)

    def _record(self, call: Call, status: int, error: BaseException | None) -> None:
        total_ns = _ns(self._clock.now() - call.started)
        target = call.target
        if target is not None:
            window, version = target.stats, target.label
        else:
            known = call.model in self.registry.names
            window = self.registry.book.window(call.model if known else "", 0)
            version = ""
        failed = None if status == 200 else (error or InternalError("client closed request"))
        if status >= 500 and target is not None:
            policy = self.registry.traffic.get(target.model)
            if policy is not None and target.version in policy.watched:
                self.urgent()
        window.record(
            call.protocol,
            status,
            total_ns,
            error=failed,
            rows=call.rows,
            input_ns=call.input_ns,
            queue_ns=call.queue_ns,
            infer_ns=call.infer_ns,
        )
        log = self.access_log
        if log.enabled:
            model = target.model if target else call.model
            log.write(call, model=model, version=version, status=status, total_ns=total_ns)

    async def infer(
        self,
        request: InferenceRequest,
        call: Call,
        target: ModelVersion | None = None,
        key: str | None = None,
    ) -> InferenceResponse:
        """Route (``target``, if it still serves, else the request's model and version, split
        by the model's traffic table), validate, schedule and execute; ``call`` (from
        :meth:`observe`) records it. ``key``: the routing key the transport found (a header);
        without one, the request's ``routing_key`` parameter routes it again."""
        unversioned = request.model_version is None
        if (
            key is None
            and unversioned
            and ROUTING_PARAMETER in request.parameters
            and request.model_name in self.registry.traffic
        ):
            target = None  # the transport split it before the body said its key
        if target is None or not target.enter():
            target = self.route(request, key)
            target.enter()  # a version just resolved is not retired: no await in between
        call.target = target
        clock = self._clock
        try:
            signature = target.signature
            names = validate(request, signature, target.model)
            timeout_s = request_timeout_s(request)
            feed = {t.name: t.data for t in request.inputs}
            rows = request.inputs[0].shape[0] if signature.max_batch_size > 0 else 1
            call.input_ns = _ns(clock.now() - call.started)
            outcome = await target.scheduler.run(feed, rows, names, timeout_s)
        except ServingError:
            raise
        except Exception:
            logger.exception("inference failed in %s version %s", target.model, target.version)
            raise InternalError(
                f"inference failed in model '{target.model}' version {target.version}"
            ) from None
        finally:
            target.leave()
        call.rows = rows
        call.queue_ns = _ns(outcome.queue_s)
        call.infer_ns = _ns(outcome.compute_s)
        if target.drift is not None:
            target.drift.offer(feed, names, outcome.outputs)
        if unversioned:
            try:  # the primary answer goes out, whatever happens to its copy
                self._shadow(target, feed, rows, names, outcome.outputs, call.infer_ns)
            except Exception:
                logger.exception("could not mirror a request to %s's shadow", target.model)
        types = signature.output_types
        outputs = [Tensor(n, types[n], a) for n, a in zip(names, outcome.outputs, strict=True)]
        return InferenceResponse(
            model_name=target.model, model_version=target.label, outputs=outputs, id=request.id
        )

    def _shadow(
        self,
        target: ModelVersion,
        feed: dict[str, Any],
        rows: int,
        names: list[str],
        outputs: list[Any],
        compute_ns: int,
    ) -> None:
        """Hand a copy of an answered request to the model's shadow version, if it has one
        and the coin says so (the answer goes out regardless)."""
        policy = self.registry.traffic.get(target.model)
        if policy is None or policy.shadow is None or policy.shadow == target.version:
            return
        if random.random() >= policy.shadow_fraction:
            return
        try:
            shadow = self.registry.entry(target.model).versions.get(policy.shadow)
        except ServingError:  # the model went away while this request ran
            shadow = None
        stats = self.registry.book.shadow(target.model, target.version, policy.shadow)
        if shadow is None:
            stats.mirrored += 1
            stats.dropped += 1
            return
        self.mirror.offer(
            Copy(stats, shadow, feed, rows, names, outputs, compute_ns, policy.atol, policy.rtol)
        )

    # -- what needs the controller -------------------------------------------------------------

    async def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        """The v2 statistics of every loaded version (or of ``name``, or one version of it),
        added up over every replica of the application."""
        if name:
            number = parse_version(version)
            entry = self.registry.entry(name)
            if number is not None:
                self.registry.resolve(name, number)
                keys = [(name, number)]
            else:
                keys = [(name, v) for v in sorted(entry.versions)]
        else:
            keys = [(e.name, v) for e in self.registry.entries for v in sorted(e.versions)]
        totals = await ask("statistics", self._control.statistics())
        return {
            "model_stats": [
                totals.get(key, StatsWindow()).as_v2(key[0], str(key[1])) for key in keys
            ]
        }

    async def summary(self) -> dict[str, Any]:
        """Every served version's statistics, latency histogram, load and drift, added up over
        the application (``serving top``)."""
        summary: dict[str, Any] = await ask("the summary", self._control.summary())
        return summary

    async def drift(self, name: str, version: str | None) -> dict[str, Any]:
        """Drift detection's state for a model's versions (or one of them): where its reference
        came from, how much was sampled, the latest window's scores."""
        number = parse_version(version)
        entry = self.registry.entry(name)
        if number is not None:
            self.registry.resolve(name, number)
        wanted = {str(number)} if number is not None else {str(v) for v in entry.versions}
        summary = await self.summary()
        versions = [
            row["drift"]
            for row in summary["versions"]
            if row["model"] == name and row["version"] in wanted
        ]
        return {"name": name, "versions": versions}

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await ask(
            "the repository index", self._control.index(ready_only)
        )
        return rows

    async def load_model(self, name: str, parameters: dict[str, Any]) -> None:
        """Triton's model control load (an admin call: the transports check the caller):
        ``parameters`` may carry ``config`` (Triton's model configuration as JSON, in place of
        the model's own config file)."""
        override = None
        for key, value in parameters.items():
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidInputError("load parameter 'config' must be a JSON string")
                override = value
            elif key.startswith("file:"):
                raise InvalidInputError(
                    "load parameters 'file:…' are not supported: put model files in the repository"
                )
            else:
                raise InvalidInputError(f"unrecognized load parameter '{key}'")
        await self._control.load(name, override)

    async def unload_model(self, name: str, parameters: dict[str, Any]) -> None:
        for key, value in parameters.items():
            if key != "unload_dependents":
                raise InvalidInputError(f"unrecognized unload parameter '{key}'")
            if not isinstance(value, bool):
                raise InvalidInputError("unload parameter 'unload_dependents' must be a boolean")
        await self._control.unload(name)  # no model here has dependents


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _v2_tensor(tensor: TensorConfig, signature: Signature) -> dict[str, Any]:
    """A tensor as v2 metadata shows it: the full shape, batch dim included."""
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": signature.full_shape(tensor)}


def _triton_tensor(tensor: TensorConfig) -> dict[str, Any]:
    """A tensor as Triton's model config shows it (int64 dims as JSON strings)."""
    return {
        "name": tensor.name,
        "data_type": to_triton(tensor.datatype),
        "dims": [str(d) for d in tensor.dims],
    }
