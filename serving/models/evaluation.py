"""A model's evaluation set (``MODEL/evaluation.npz``) and running a version over it.

The file holds an array per model input (or one named ``inputs`` for a model with one input)
and, for the offline accuracy gate, the expected ``labels``. Drift profiles (``serving
profile``) read its inputs; rollouts and ``serving validate --baseline`` score versions on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serving.models.signature import Signature
from serving.protocol.datatypes import numpy_dtype

if TYPE_CHECKING:
    from serving.models.repository import ModelSource, VersionSource

EVALUATION_FILE = "evaluation.npz"


@dataclass(frozen=True)
class EvaluationSet:
    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))


def read_evaluation(directory: Path, signature: Signature) -> EvaluationSet:
    """The evaluation set of the model in ``directory``, its inputs cast to ``signature``'s
    types; FileNotFoundError when there is none, ValueError when it does not fit."""
    path = directory / EVALUATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory.name} has no evaluation set ({path.name})")
    names = [t.name for t in signature.inputs]
    with np.load(path, allow_pickle=False) as data:
        if all(name in data for name in names):
            arrays = {name: data[name] for name in names}
        elif len(names) == 1 and "inputs" in data:
            arrays = {names[0]: data["inputs"]}
        else:
            raise ValueError(
                f"{path.name} must hold an array per input ({', '.join(names)}), or 'inputs' "
                "for a model with one input"
            )
        labels = data.get("labels")
    inputs = {
        t.name: arrays[t.name].astype(numpy_dtype(t.datatype), copy=False) for t in signature.inputs
    }
    return EvaluationSet(path, inputs, labels)


def _chunks(evaluation: EvaluationSet, signature: Signature) -> Iterator[dict[str, np.ndarray]]:
    """The set in requests the model takes: batches of up to ``max_batch_size`` rows, or one
    sample at a time for a model that does not batch."""
    step = signature.max_batch_size
    for start in range(0, evaluation.rows, step or 1):
        if step:
            yield {k: v[start : start + step] for k, v in evaluation.inputs.items()}
        else:
            yield {k: v[start] for k, v in evaluation.inputs.items()}


def _joined(parts: list[list[np.ndarray]], signature: Signature) -> list[np.ndarray]:
    join = np.concatenate if signature.max_batch_size else np.stack
    return [join([p[i] for p in parts]) for i in range(len(signature.output_names))]


def run_sync(
    infer: Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]],
    evaluation: EvaluationSet,
    signature: Signature,
) -> list[np.ndarray]:
    """Every output over the whole set, through ``infer`` (a session's)."""
    names = signature.output_names
    return _joined([infer(chunk, names) for chunk in _chunks(evaluation, signature)], signature)


def run_offline(
    source: ModelSource, found: VersionSource
) -> tuple[EvaluationSet, Signature, list[np.ndarray]]:
    """Open ``found`` outside a server (default session options), run it over its model's
    evaluation set and close it: the set, the version's signature and every output.
    LoadError, FileNotFoundError (no set) and ValueError (a set that does not fit) reach the
    caller."""
    from serving.models.loader import load_version
    from serving.models.runtimes.onnx import open_offline

    shown = f"{source.name}/{found.version}"
    loaded = load_version(found.path, source.config, open_offline, shown=shown)
    try:
        evaluation = read_evaluation(source.directory, loaded.signature)
        outputs = run_sync(loaded.runtime.infer, evaluation, loaded.signature)
        return evaluation, loaded.signature, outputs
    finally:
        loaded.runtime.close()


async def run_async(
    infer: Callable[[dict[str, np.ndarray], int, list[str]], Awaitable[list[np.ndarray]]],
    evaluation: EvaluationSet,
    signature: Signature,
) -> list[np.ndarray]:
    """As :func:`run_sync`, through an async ``infer(feed, rows, names)`` (a served version's
    scheduler)."""
    names = signature.output_names
    parts = []
    for chunk in _chunks(evaluation, signature):
        rows = len(next(iter(chunk.values()))) if signature.max_batch_size else 1
        parts.append(await infer(chunk, rows, names))
    return _joined(parts, signature)


def predictions(outputs: list[np.ndarray], signature: Signature) -> np.ndarray:
    """Each row's predicted class: an integer output with one value per row (a label), else
    the argmax of the first float output with a class axis."""
    batched = signature.max_batch_size > 0
    ranked = list(zip(signature.output_names, outputs, strict=True))
    for _, array in ranked:
        if np.issubdtype(array.dtype, np.integer) and array.ndim == 1 and batched:
            return array
    for _, array in ranked:
        if np.issubdtype(array.dtype, np.floating) and array.ndim >= 2 and array.shape[-1] > 1:
            labels: np.ndarray = array.reshape(array.shape[0], -1).argmax(axis=1)
            return labels
    raise ValueError(
        "cannot tell which output is the prediction: give the model an integer label output "
        "or a float output of class scores"
    )


def accuracy(outputs: list[np.ndarray], evaluation: EvaluationSet, signature: Signature) -> float:
    if evaluation.labels is None:
        raise ValueError(f"{evaluation.path.name} has no 'labels' array to score against")
    predicted = predictions(outputs, signature)
    labels = evaluation.labels.reshape(-1)
    if predicted.shape != labels.shape:
        raise ValueError(
            f"{evaluation.path.name}: {labels.size} labels for {predicted.size} predictions"
        )
    return float((predicted == labels).mean())


def gate(stable: float, candidate: float, margin: float) -> bool:
    """Whether the candidate beats stable by at least ``margin`` (accuracies in [0, 1])."""
    return candidate >= stable + margin - 1e-12
