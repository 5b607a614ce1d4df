"""A model version's signature: its config reconciled with its graph, and request validation."""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.config import DEFAULT_MAX_BATCH_SIZE, ModelConfig, TensorConfig
from serving.errors import InvalidInputError
from serving.models.runtimes.base import GraphTensor
from serving.types import InferenceRequest


@dataclass(frozen=True)
class Signature:
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    # Derived once, read on every request.
    inputs_by_name: dict[str, TensorConfig] = field(init=False, repr=False, compare=False)
    input_shapes: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    output_types: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        derived = {
            "inputs_by_name": {t.name: t for t in self.inputs},
            "input_shapes": {t.name: tuple(self.full_shape(t)) for t in self.inputs},
            "output_types": {t.name: t.datatype for t in self.outputs},
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def full_shape(self, tensor: TensorConfig) -> list[int]:
        """The shape a client sees: the batch dim (-1) first when the model batches."""
        return ([-1] if self.max_batch_size > 0 else []) + list(tensor.dims)

    @property
    def output_names(self) -> list[str]:
        return list(self.output_types)


class SignatureError(ValueError):
    """The config and the graph disagree."""


def reconcile(
    config: ModelConfig, graph_inputs: list[GraphTensor], graph_outputs: list[GraphTensor]
) -> Signature:
    graph = graph_inputs + graph_outputs
    batchable = all(len(t.shape) >= 1 and t.shape[0] == -1 for t in graph)
    max_batch = config.max_batch_size
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH_SIZE if batchable else 0
    elif max_batch > 0 and not batchable:
        fixed = [t.name for t in graph if not t.shape or t.shape[0] != -1]
        raise SignatureError(
            f"max_batch_size {max_batch} needs a dynamic first dimension on every tensor; "
            f"{', '.join(fixed)} have none"
        )
    if config.dynamic_batching is not None and max_batch == 0:
        raise SignatureError("dynamic_batching needs a model with max_batch_size > 0")
    inputs = _merge("input", config.inputs, graph_inputs, max_batch)
    outputs = _merge("output", config.outputs, graph_outputs, max_batch)
    return Signature(max_batch, inputs, outputs)


def _merge(
    kind: str, declared: tuple[TensorConfig, ...], graph: list[GraphTensor], max_batch: int
) -> tuple[TensorConfig, ...]:
    by_name = {t.name: t for t in graph}
    for tensor in declared:
        if tensor.name not in by_name:
            names = ", ".join(by_name) or "none"
            raise SignatureError(f"config {kind} '{tensor.name}' is not in the graph ({names})")
    declared_by_name = {t.name: t for t in declared}
    merged = []
    for node in graph:
        dims = node.shape[1:] if max_batch > 0 else node.shape
        if node.name not in declared_by_name:
            merged.append(TensorConfig.model_validate(
                {"name": node.name, "datatype": node.datatype, "dims": dims}
            ))  # fmt: skip
            continue
        tensor = declared_by_name[node.name]
        if tensor.datatype != node.datatype:
            raise SignatureError(
                f"config {kind} '{tensor.name}' is {tensor.datatype}, the graph has {node.datatype}"
            )
        if len(tensor.dims) != len(dims) or any(
            c != g and c != -1 and g != -1 for c, g in zip(tensor.dims, dims, strict=False)
        ):
            raise SignatureError(
                f"config {kind} '{tensor.name}' has dims {list(tensor.dims)}, the graph has "
                f"{list(dims)}" + (" after the batch dimension" if max_batch > 0 else "")
            )
        merged.append(tensor)
    return tuple(merged)


def validate(request: InferenceRequest, signature: Signature, model: str) -> list[str]:
    """Check ``request`` against ``signature``; return the output names to compute."""
    expected = signature.inputs_by_name
    seen: set[str] = set()
    for tensor in request.inputs:
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidInputError(
                f"unknown input '{tensor.name}' for model '{model}' "
                f"(expected: {', '.join(expected)})"
            )
        if tensor.name in seen:
            raise InvalidInputError(f"input '{tensor.name}' is given more than once")
        seen.add(tensor.name)
        if tensor.datatype != spec.datatype:
            raise InvalidInputError(
                f"input '{tensor.name}' has datatype {tensor.datatype}, model '{model}' "
                f"expects {spec.datatype}"
            )
        _check_shape(tensor.name, tensor.shape, signature)
    missing = [name for name in expected if name not in seen]
    if missing:
        raise InvalidInputError(f"missing input(s) for model '{model}': {', '.join(missing)}")
    _check_batch_agrees(request, signature)
    if request.outputs is None:
        return signature.output_names
    names = []
    known = signature.output_types
    for output in request.outputs:
        if output.name not in known:
            raise InvalidInputError(
                f"unknown output '{output.name}' for model '{model}' "
                f"(available: {', '.join(signature.output_names)})"
            )
        if output.name not in names:
            names.append(output.name)
    return names


def _check_shape(name: str, shape: tuple[int, ...], signature: Signature) -> None:
    full = signature.input_shapes[name]
    if len(shape) != len(full) or any(
        want != -1 and got != want for got, want in zip(shape, full, strict=False)
    ):
        raise InvalidInputError(
            f"input '{name}' has shape {list(shape)}, model expects {list(full)} (-1: any size)"
        )
    if signature.max_batch_size > 0:
        batch = shape[0]
        if batch < 1:
            raise InvalidInputError(f"input '{name}' has batch size 0; at least 1 row is needed")
        if batch > signature.max_batch_size:
            raise InvalidInputError(
                f"input '{name}' has batch size {batch}, above the model's max_batch_size "
                f"{signature.max_batch_size}"
            )


def _check_batch_agrees(request: InferenceRequest, signature: Signature) -> None:
    if signature.max_batch_size > 0:
        batches = {t.shape[0] for t in request.inputs}
        if len(batches) > 1:
            raise InvalidInputError(
                f"inputs disagree on the batch size: {sorted(batches)}; "
                "all must share the first dim"
            )
