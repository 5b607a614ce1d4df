"""The model repository: ``REPO/MODEL/VERSION/model.onnx`` plus ``config.yaml`` or ``config.pbtxt``.

Scanning never raises for one bad model: its problem is recorded and the others carry on.
Version numbers are parsed here, once, for directory names and for versions named in requests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import yaml
from google.protobuf import json_format, text_format

from serving.config import LatestPolicy, ModelConfig, SpecificPolicy
from serving.errors import InvalidInputError, ModelNotFoundError
from serving.models.spec import ModelSpec, VersionSpec
from serving.protocol.datatypes import from_triton

if TYPE_CHECKING:
    from serving.protocol.proto.model_config_pb2 import ModelConfig as ModelConfigMessage
    from serving.protocol.proto.model_config_pb2 import ModelInput, ModelOutput

logger = logging.getLogger(__name__)

CONFIG_YAML = "config.yaml"
CONFIG_PBTXT = "config.pbtxt"
MAX_VERSION = 2**63 - 1
_VERSION = re.compile(r"[1-9][0-9]{0,18}")


def version_number(text: str) -> int | None:
    """The version a directory name or request names: ASCII digits without a leading zero, as
    Triton reads version directories, from 1 to 2^63 - 1; None for anything else."""
    if not _VERSION.fullmatch(text):
        return None
    number = int(text)
    return number if number <= MAX_VERSION else None


def parse_version(text: str | None) -> int | None:
    """A request's model version: None (or empty) for the model's default, else its number.

    The one rule for every transport and endpoint: anything else is refused with the same error.
    """
    if not text:
        return None
    number = version_number(text)
    if number is None:
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise InvalidInputError(
            f"model version must be a positive integer without leading zeros, got '{shown}'"
        )
    return number


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


def model_directories(repository: Path) -> list[Path]:
    """Every model directory under ``repository``, sorted by name (hidden ones left out)."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} is not a directory")
    return sorted(
        p for p in repository.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )


def scan(repository: Path) -> list[ModelSource]:
    """Every model of ``repository``, sorted by name."""
    return [scan_model(directory) for directory in model_directories(repository)]


def scan_model(directory: Path, override: ModelConfig | None = None) -> ModelSource:
    """The model in ``directory``, with its own config or ``override`` in place of it."""
    name = directory.name
    if override is not None:
        config = override
    else:
        try:
            config = load_config(directory)
        except (ValueError, OSError) as error:
            return ModelSource(name, directory, ModelConfig(), error=f"invalid config: {error}")
    if config.name is not None and config.name != name:
        return ModelSource(
            name, directory, config,
            error=f"config name '{config.name}' does not match directory '{name}'",
        )  # fmt: skip
    found = sorted(
        number
        for p in directory.iterdir()
        if p.is_dir() and (number := version_number(p.name)) is not None
    )
    policy = config.version_policy
    if isinstance(policy, LatestPolicy):
        chosen = found[-policy.latest :]
    elif isinstance(policy, SpecificPolicy):
        chosen = sorted(set(policy.specific))
    else:
        chosen = found
    if not chosen:
        return ModelSource(name, directory, config, error="no version directories found")
    versions = [VersionSource(v, directory / str(v) / config.model_filename) for v in chosen]
    folder = directory.resolve()
    if folder.parent != directory.parent.resolve():
        return ModelSource(
            name, directory, config, error=f"the model folder leads out of the repository "
            f"(a symlink to {folder})"
        )  # fmt: skip
    for found_version in versions:
        if not found_version.path.resolve().is_relative_to(folder):
            return ModelSource(
                name, directory, config, error=f"version {found_version.version}'s "
                f"{config.model_filename} leads out of the model's folder (a symlink to "
                f"{found_version.path.resolve()})",
            )  # fmt: skip
    return ModelSource(name, directory, config, versions)


def _validated(document: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.model_validate(document)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(problems) from None


def load_config(directory: Path) -> ModelConfig:
    """The model's config: ``config.yaml``, else Triton's ``config.pbtxt``, else defaults."""
    yaml_path = directory / CONFIG_YAML
    pbtxt_path = directory / CONFIG_PBTXT
    if yaml_path.exists():
        try:
            document = yaml.safe_load(yaml_path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{CONFIG_YAML} is not valid YAML: {error}") from None
        if not isinstance(document, dict):
            raise ValueError(f"{CONFIG_YAML} must hold a mapping")
        return _validated(document)
    if pbtxt_path.exists():
        return _validated(parse_pbtxt(pbtxt_path.read_text()))
    return ModelConfig()


def parse_pbtxt(text: str) -> dict[str, Any]:
    """The fields of a Triton ``config.pbtxt`` this server uses, as ``ModelConfig`` input."""
    from serving.protocol.proto import model_config_pb2 as pb

    try:
        message = text_format.Parse(text, pb.ModelConfig(), allow_unknown_field=True)
    except text_format.ParseError as error:
        raise ValueError(f"{CONFIG_PBTXT}: {error}") from None
    return _from_triton(message)


def config_override(text: str) -> ModelConfig:
    """A model control ``config`` parameter: Triton's model configuration as JSON, which takes
    the place of the model's own config file (as in Triton)."""
    from serving.protocol.proto import model_config_pb2 as pb

    try:
        message = json_format.Parse(text, pb.ModelConfig(), ignore_unknown_fields=True)
        return _validated(_from_triton(message))
    except (json_format.ParseError, ValueError) as error:
        raise InvalidInputError(f"invalid 'config' parameter: {error}") from None


def _from_triton(message: ModelConfigMessage) -> dict[str, Any]:
    from serving.protocol.proto import model_config_pb2 as pb

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
        "inputs": [_tensor(t, pb) for t in message.input],
        "outputs": [_tensor(t, pb) for t in message.output],
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


def _tensor(tensor: ModelInput | ModelOutput, pb: Any) -> dict[str, Any]:
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


def plan_model(repository: Path, name: str, override: str | None, hashes: Hashes) -> ModelSpec:
    """What serving ``name`` from ``repository`` (with ``override``, Triton's config JSON, as its
    config) means now: the config and the versions its policy picks, each with its file's
    sha256; versions whose file cannot be read are unavailable with the reason."""
    directory = repository / name
    if "/" in name or name.startswith(".") or not directory.is_dir():
        raise ModelNotFoundError(model=name, known=[d.name for d in model_directories(repository)])
    source = scan_model(directory, config_override(override) if override else None)
    if source.error is not None:
        return ModelSpec(name, source.config, error=source.error, override=override)
    versions: list[VersionSpec] = []
    unavailable: list[tuple[int, str]] = []
    for found in source.versions:
        shown = f"{name}/{found.version}/{source.config.model_filename}"
        try:
            versions.append(VersionSpec(found.version, hashes.sha256(found.path)))
        except FileNotFoundError:
            unavailable.append((found.version, f"model file {shown} not found"))
        except OSError as error:
            unavailable.append((found.version, f"cannot read {shown}: {error.strerror}"))
    return ModelSpec(name, source.config, tuple(versions), tuple(unavailable), None, override)


class Hashes:
    """sha256 of model files, recomputed only when a file's size, mtime or inode changes: a
    repository polled every few seconds is not read in full every time."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}

    def sha256(self, path: Path) -> str:
        status = os.stat(path)
        fingerprint = (status.st_size, status.st_mtime_ns, status.st_ino)
        known = self._known.get(path)
        if known is not None and known[0] == fingerprint:
            return known[1]
        digest = sha256_of(path)
        self._known[path] = (fingerprint, digest)
        return digest
