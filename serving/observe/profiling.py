"""Drift reference profiles from a model's evaluation set (``serving profile``).

The evaluation set is ``MODEL/evaluation.npz``: arrays named by the model's inputs (or one
array named ``inputs`` for a model with one input). Each version runs over it and its inputs
and outputs are profiled into ``MODEL/VERSION/profile.json``, which the controller reads when
the version loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.config import ModelConfig
from serving.models.loader import load_version
from serving.models.repository import ModelSource, scan_model
from serving.models.runtimes.base import Runtime
from serving.observe.drift import PROFILE_FILE, Profile
from serving.protocol.datatypes import numpy_dtype

EVALUATION_FILE = "evaluation.npz"


@dataclass(frozen=True)
class Profiled:
    version: int
    path: Path
    rows: int
    features: int


def evaluation_inputs(source: ModelSource, names: list[str]) -> dict[str, np.ndarray]:
    path = source.directory / EVALUATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{source.name} has no evaluation set ({path.name})")
    with np.load(path, allow_pickle=False) as data:
        if all(name in data for name in names):
            return {name: data[name] for name in names}
        if len(names) == 1 and "inputs" in data:
            return {names[0]: data["inputs"]}
    raise ValueError(
        f"{path.name} must hold an array per input ({', '.join(names)}), or 'inputs' for a "
        "model with one input"
    )


def _open(path: Path, config: ModelConfig) -> Runtime:
    from serving.models.runtimes.onnx import ONNXRuntime, SessionOptions

    return ONNXRuntime(path, providers=config.execution_providers, options=SessionOptions())


def profile_model(directory: Path, versions: list[int] | None = None) -> list[Profiled]:
    """Profile the model in ``directory`` (the versions it serves, or ``versions``) on its
    evaluation set; writes each version's ``profile.json``."""
    source = scan_model(directory)
    if source.error:
        raise ValueError(f"{source.name}: {source.error}")
    done = []
    for found in source.versions:
        if versions and found.version not in versions:
            continue
        shown = f"{source.name}/{found.version}"
        loaded = load_version(found.path, source.config, _open, shown=shown)
        try:
            signature = loaded.signature
            inputs = evaluation_inputs(source, [t.name for t in signature.inputs])
            inputs = {
                t.name: inputs[t.name].astype(numpy_dtype(t.datatype), copy=False)
                for t in signature.inputs
            }
            names = signature.output_names
            step = signature.max_batch_size or None
            rows = len(next(iter(inputs.values())))
            parts: list[list[np.ndarray]] = []
            for start in range(0, rows, step or rows):
                chunk = {k: v[start : start + step] if step else v for k, v in inputs.items()}
                parts.append(loaded.runtime.infer(chunk, names))
            outputs = {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}
        finally:
            loaded.runtime.close()
        profile = Profile.from_data(inputs, outputs, source=f"evaluation set ({rows} rows)")
        path = found.path.parent / PROFILE_FILE
        profile.save(path)
        done.append(Profiled(found.version, path, rows, profile.features))
    return done
