"""What both transports do: health, metadata, config, statistics, repository index, infer.

Returns plain dicts in the shape of the v2 JSON documents; the gRPC adapter converts them.
"""

from __future__ import annotations

from typing import Any

from serving import __version__
from serving.config import LatestPolicy, SpecificPolicy, TensorConfig
from serving.errors import ModelNotReadyError
from serving.models import ModelEntry, ModelHost, ModelVersion
from serving.protocol.datatypes import to_triton
from serving.signature import Signature
from serving.types import InferenceRequest, InferenceResponse

SERVER_NAME = "serving"
EXTENSIONS = (
    "binary_tensor_data",
    "classification_not_supported",
    "model_configuration",
    "statistics",
    "model_repository",
)


class DataPlane:
    def __init__(self, host: ModelHost) -> None:
        self.host = host
        self._ready = True

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once the repository is loaded; a broken model does not hold the others back."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str | None) -> bool:
        entry = self.host.entry(name)
        if not version:
            return entry.default is not None
        return self.host.resolve(name, version).ready

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        target = self._ready_version(name, version)
        entry = self.host.entry(name)
        signature = target.signature
        assert signature is not None
        versions = (
            [str(v.version) for v in sorted(entry.versions.values(), key=lambda v: v.version)
             if v.ready]
            if not version
            else [str(target.version)]
        )  # fmt: skip
        return {
            "name": name,
            "versions": versions,
            "platform": entry.config.platform,
            "inputs": [_v2_tensor(t, signature) for t in signature.inputs],
            "outputs": [_v2_tensor(t, signature) for t in signature.outputs],
            "parameters": {"sha256": target.sha256, **entry.config.labels}
            if version
            else dict(entry.config.labels),
        }

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration (JSON form of ``inference.ModelConfig``)."""
        target = self._ready_version(name, version)
        entry = self.host.entry(name)
        signature = target.signature
        assert signature is not None
        config = entry.config
        policy: dict[str, Any]
        if isinstance(config.version_policy, LatestPolicy):
            policy = {"latest": {"num_versions": config.version_policy.latest}}
        elif isinstance(config.version_policy, SpecificPolicy):
            policy = {"specific": {"versions": [str(v) for v in config.version_policy.specific]}}
        else:
            policy = {"all": {}}
        providers = target.runtime.providers if target.runtime else []
        kind = "KIND_CPU" if providers and providers[0] == "CPUExecutionProvider" else "KIND_GPU"
        parameters = {k: {"string_value": v} for k, v in config.labels.items()}
        parameters["sha256"] = {"string_value": target.sha256 or ""}
        parameters["execution_providers"] = {"string_value": ",".join(providers)}
        return {
            "name": name,
            "platform": config.platform,
            "backend": "onnxruntime",
            "version_policy": policy,
            "max_batch_size": signature.max_batch_size,
            "input": [_triton_tensor(t) for t in signature.inputs],
            "output": [_triton_tensor(t) for t in signature.outputs],
            "instance_group": [{"count": config.instance_count, "kind": kind}],
            "default_model_filename": config.model_filename,
            "parameters": parameters,
        }

    def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        if name:
            entry = self.host.entry(name)
            if version:
                targets = [self.host.resolve(name, version)]
            else:
                targets = sorted(entry.versions.values(), key=lambda v: v.version)
        else:
            targets = [v for e in self.host.entries for v in e.versions.values()]
        return {
            "model_stats": [t.stats.as_dict(t.model, str(t.version)) for t in targets if t.ready]
        }

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        index: list[dict[str, Any]] = []
        for entry in self.host.entries:
            rows = _index_rows(entry)
            index.extend(r for r in rows if not ready_only or r["state"] == "READY")
        return index

    def require(self, name: str, version: str | None) -> ModelVersion:
        """The version that will serve ``name``/``version``, or the error to answer with.

        Checked before reading a body; pass the result to ``infer`` to resolve only once.
        """
        return self._ready_version(name, version)

    async def infer(
        self, request: InferenceRequest, target: ModelVersion | None = None
    ) -> InferenceResponse:
        if target is None:
            return await self.host.infer(request)
        return await target.infer(request, self.host.workers)

    def _ready_version(self, name: str, version: str | None) -> ModelVersion:
        target = self.host.resolve(name, version)
        if not target.ready:
            raise ModelNotReadyError(model=name, version=version, reason=target.reason)
        return target


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


def _index_rows(entry: ModelEntry) -> list[dict[str, Any]]:
    if entry.error is not None or not entry.versions:
        return [{"name": entry.name, "version": "", "state": "UNAVAILABLE",
                 "reason": entry.error or "no versions"}]  # fmt: skip
    return [
        {"name": entry.name, "version": str(v.version), "state": v.state.value, "reason": v.reason}
        for v in sorted(entry.versions.values(), key=lambda v: v.version)
    ]
