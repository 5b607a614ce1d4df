"""Loading one model version: the file checked against its expected hash, a runtime session
opened, the config reconciled with the graph, one warm-up inference. Blocking: run it off the
event loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.config import ModelConfig
from serving.models.runtimes.base import ModelFile, Runtime
from serving.models.signature import Signature, SignatureError, reconcile
from serving.protocol.datatypes import numpy_dtype

RuntimeFactory = Callable[[ModelFile, ModelConfig], Runtime]
"""Opens a runtime session for a model file, with settings from the model's config."""


class LoadError(Exception):
    """A version could not be loaded; ``reason`` says why, naming paths relative to the
    repository."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Loaded:
    runtime: Runtime
    signature: Signature
    sha256: str


def load_version(
    path: Path,
    config: ModelConfig,
    factory: RuntimeFactory,
    *,
    shown: str,
    expected_sha256: str | None = None,
    root: Path | None = None,
) -> Loaded:
    """Load ``path`` (``shown`` is how messages name it) or raise :class:`LoadError`; what it
    refers to must stay inside ``root`` (by default the file's folder, where ONNX Runtime reads
    external data from)."""
    if not path.is_file():
        raise LoadError(f"model file {shown} not found")
    try:
        source = ModelFile.read(path, root)
    except OSError as error:
        raise LoadError(f"cannot read {shown}: {error.strerror}") from None
    sha = source.sha256
    if expected_sha256 is not None and sha != expected_sha256:
        raise LoadError(
            f"model file {shown} changed since the load was requested "
            f"(sha256 {sha[:12]}…, expected {expected_sha256[:12]}…)"
        )
    try:
        runtime = factory(source, config)
    except Exception as error:
        message = str(error).replace(str(path), shown).strip().splitlines()[0]
        raise LoadError(f"cannot load {shown}: {message}") from None
    try:
        signature = signed(config, runtime, shown)
        warm_up(runtime, signature)
    except LoadError:
        runtime.close()
        raise
    except Exception as error:
        runtime.close()
        raise LoadError(f"warm-up inference on {shown} failed: {error}") from None
    return Loaded(runtime, signature, sha)


def signed(config: ModelConfig, runtime: Runtime, shown: str) -> Signature:
    """``config`` reconciled with the runtime's graph, or :class:`LoadError` saying how they
    disagree."""
    try:
        return reconcile(config, runtime.inputs, runtime.outputs)
    except SignatureError as error:
        raise LoadError(f"config does not match {shown}: {error}") from None


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
