"""The model repository: ``REPO/MODEL/VERSION/model.onnx`` plus ``config.yaml`` or ``config.pbtxt``.

Scanning never raises for one bad model: its problem is recorded and the others carry on.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import yaml
from google.protobuf import text_format

from serving.config import LatestPolicy, ModelConfig, SpecificPolicy
from serving.protocol.datatypes import from_triton

if TYPE_CHECKING:
    from serving.protocol.proto.model_config_pb2 import ModelInput, ModelOutput

logger = logging.getLogger(__name__)

CONFIG_YAML = "config.yaml"
CONFIG_PBTXT = "config.pbtxt"


@dataclass(frozen=True)
class VersionSource:
    version: int
    path: Path
    """The model file; it may not exist, which loading reports."""


@dataclass
class ModelSource:
    """One model directory as found on disk."""

    name: str
    directory: Path
    config: ModelConfig
    versions: list[VersionSource] = field(default_factory=list)
    error: str | None = None
    """Why the whole model cannot be served (bad config, no versions); None if it can be tried."""


def scan(repository: Path) -> list[ModelSource]:
    """Every model directory under ``repository``, sorted by name."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} is not a directory")
    sources = []
    for directory in sorted(p for p in repository.iterdir() if p.is_dir()):
        if directory.name.startswith((".", "_")):
            continue
        sources.append(_scan_model(directory))
    return sources


def _scan_model(directory: Path) -> ModelSource:
    name = directory.name
    try:
        config = load_config(directory)
    except (ValueError, OSError) as error:
        return ModelSource(name, directory, ModelConfig(), error=f"invalid config: {error}")
    if config.name is not None and config.name != name:
        return ModelSource(
            name, directory, config,
            error=f"config name '{config.name}' does not match directory '{name}'",
        )  # fmt: skip
    found = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    policy = config.version_policy
    if isinstance(policy, LatestPolicy):
        chosen = found[-policy.latest :]
    elif isinstance(policy, SpecificPolicy):
        chosen = sorted(policy.specific)
    else:
        chosen = found
    if not chosen:
        return ModelSource(name, directory, config, error="no version directories found")
    versions = [VersionSource(v, directory / str(v) / config.model_filename) for v in chosen]
    return ModelSource(name, directory, config, versions)


def load_config(directory: Path) -> ModelConfig:
    """The model's config: ``config.yaml``, else Triton's ``config.pbtxt``, else defaults."""
    yaml_path = directory / CONFIG_YAML
    pbtxt_path = directory / CONFIG_PBTXT
    try:
        if yaml_path.exists():
            document = yaml.safe_load(yaml_path.read_text()) or {}
            if not isinstance(document, dict):
                raise ValueError(f"{CONFIG_YAML} must hold a mapping")
            return ModelConfig.model_validate(document)
        if pbtxt_path.exists():
            return ModelConfig.model_validate(parse_pbtxt(pbtxt_path.read_text()))
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(problems) from None
    except yaml.YAMLError as error:
        raise ValueError(f"{CONFIG_YAML} is not valid YAML: {error}") from None
    return ModelConfig()


def parse_pbtxt(text: str) -> dict[str, Any]:
    """The fields of a Triton ``config.pbtxt`` this server uses, as ``ModelConfig`` input."""
    from serving.protocol.proto import model_config_pb2 as pb

    try:
        message = text_format.Parse(text, pb.ModelConfig(), allow_unknown_field=True)
    except text_format.ParseError as error:
        raise ValueError(f"{CONFIG_PBTXT}: {error}") from None
    if message.platform not in ("", "onnxruntime_onnx") or message.backend not in (
        "",
        "onnxruntime",
    ):
        raise ValueError(
            f"only ONNX models are served (platform '{message.platform}', "
            f"backend '{message.backend}')"
        )
    document: dict[str, Any] = {
        "max_batch_size": message.max_batch_size,
        "inputs": [_tensor(t) for t in message.input],
        "outputs": [_tensor(t) for t in message.output],
    }
    if message.name:
        document["name"] = message.name
    if message.default_model_filename:
        document["model_filename"] = message.default_model_filename
    policy = message.version_policy.WhichOneof("policy_choice")
    if policy == "latest":
        document["version_policy"] = {"latest": message.version_policy.latest.num_versions}
    elif policy == "specific":
        document["version_policy"] = {"specific": list(message.version_policy.specific.versions)}
    elif policy == "all":
        document["version_policy"] = "all"
    if message.HasField("dynamic_batching"):
        batching = message.dynamic_batching
        queue = batching.default_queue_policy
        document["dynamic_batching"] = {
            "max_queue_delay_ms": batching.max_queue_delay_microseconds / 1000,
            "preferred_batch_sizes": list(batching.preferred_batch_size),
            **({"max_queue_size": queue.max_queue_size} if queue.max_queue_size else {}),
            **(
                {"default_timeout_ms": queue.default_timeout_microseconds / 1000}
                if queue.default_timeout_microseconds
                else {}
            ),
        }
    count = sum(max(group.count, 1) for group in message.instance_group)
    if count:
        document["instance_count"] = count
    if message.parameters:
        document["labels"] = {k: v.string_value for k, v in message.parameters.items()}
    return document


def _tensor(tensor: ModelInput | ModelOutput) -> dict[str, Any]:
    from serving.protocol.proto import model_config_pb2 as pb

    return {
        "name": tensor.name,
        "datatype": from_triton(pb.DataType.Name(tensor.data_type)),
        "dims": tuple(tensor.dims),
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
