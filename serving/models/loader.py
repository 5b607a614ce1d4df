"""Loading one model version: the file checked against its expected hash, a runtime session
opened, the config reconciled with the graph, one warm-up inference. Blocking: run it off the
event loop."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.config import ModelConfig
from serving.models.runtimes.base import ModelFile, Runtime
from serving.models.runtimes.processed import ProcessingError, with_processing
from serving.models.signature import Signature, SignatureError, reconcile
from serving.protocol.datatypes import numpy_dtype

logger = logging.getLogger(__name__)

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
        runtime = with_processing(runtime, config)
    except ProcessingError as error:
        runtime.close()
        raise LoadError(f"config does not match {shown}: {error}") from None
    try:
        signature = signed(config, runtime, shown)
        warm_up(runtime, signature)
    except LoadError:
        runtime.close()
        raise
    except Exception as error:
        runtime.close()
        raise LoadError(f"warm-up inference on {shown} failed: {error}") from None
    fallback = getattr(runtime, "fallback", None)
    if fallback and "execution_providers" in config.model_fields_set:
        logger.warning("%s: %s", shown, fallback)  # asked for in so many words: say it loudly
    return Loaded(runtime, signature, sha)


def signed(config: ModelConfig, runtime: Runtime, shown: str) -> Signature:
    """``config`` reconciled with the runtime's graph, or :class:`LoadError` saying how they
    disagree."""
    try:
        return reconcile(config, runtime.inputs, runtime.outputs)
    except SignatureError as error:
        raise LoadError(f"config does not match {shown}: {error}") from None


def sample_inputs(
    signature: Signature, smallest: dict[str, tuple[int, ...]] | None = None
) -> dict[str, np.ndarray]:
    """Zeros of the right type, free dims set to 1 (or to the ``smallest`` an input takes):
    enough to run the graph once."""
    sample = {}
    for tensor in signature.inputs:
        least = (smallest or {}).get(tensor.name)
        dims = list(least) if least is not None else [1 if d == -1 else d for d in tensor.dims]
        shape = [1] * (signature.max_batch_size > 0) + dims
        if tensor.datatype == "BYTES":
            array = np.full(shape, b"", dtype=object)
        else:
            array = np.zeros(shape, dtype=numpy_dtype(tensor.datatype))
        sample[tensor.name] = array
    return sample


def warm_up(runtime: Runtime, signature: Signature) -> None:
    smallest = getattr(runtime, "sample_sizes", None)
    runtime.infer(sample_inputs(signature, smallest), signature.output_names)
