"""CUDA graphs: one captured per padded batch size, replayed for every batch that fits it.

A replay skips the per-kernel launch cost, which on small models is most of an execution, but a
graph replays the exact device addresses and shapes it captured. So each batch size gets its own
input and output buffers, bound once; a batch is copied into the smallest size that holds it,
padded with zeros, and the padding is sliced off the outputs. A model qualifies when every
tensor's shape is fixed but for the batch dim, nothing is a string, and it has no control flow
(``If``, ``Loop``, ``Scan``), and when its session runs on the CUDA provider; otherwise it runs
without graphs and says why.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from kernels._backend import cupy, on_device
from serving.models.runtimes.base import GraphTensor
from serving.protocol.datatypes import NUMPY_DTYPES

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def batch_sizes(max_batch_size: int, preferred: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The sizes captured: powers of two up to the maximum, the maximum, and the preferred
    sizes (what the batcher forms most, so that those need no padding)."""
    sizes = {1, max_batch_size, *(p for p in preferred if p <= max_batch_size)}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def control_flow(proto: Any) -> str | None:
    """Why the model's graph cannot be captured (its control flow), or None: judged before a
    session exists."""
    found = sorted({n.op_type for n in _nodes(proto)} & CONTROL_FLOW)
    if found:
        return f"it has control flow ({', '.join(found)}), which a CUDA graph cannot capture"
    return None


def unfit_tensor(tensors: list[GraphTensor]) -> str | None:
    """Why a session's tensors cannot be captured (a string, a free dim besides the batch),
    or None."""
    for tensor in tensors:
        if tensor.datatype == "BYTES":
            return f"'{tensor.name}' is a string tensor, which lives on the host"
        if not tensor.shape or tensor.shape[0] != -1 or -1 in tensor.shape[1:]:
            return (f"'{tensor.name}' has shape {list(tensor.shape)}: a graph needs every dim "
                    "fixed but the first, the batch")  # fmt: skip
    return None


def _nodes(proto: Any) -> list[Any]:
    nodes = list(proto.graph.node)
    for function in proto.functions:
        nodes.extend(function.node)
    return nodes


@dataclass
class _Captured:
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    staging: dict[str, np.ndarray]
    binding: Any
    run: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class GraphRunner:
    """Executions of one session through per-size bound buffers and graph ids."""

    def __init__(
        self,
        session: Any,
        inputs: list[GraphTensor],
        outputs: list[GraphTensor],
        device: tuple[str, int],
        sizes: tuple[int, ...],
    ) -> None:
        self.sizes = sizes
        self._session = session
        self._captured: dict[int, _Captured] = {}
        kind, index = device
        for graph_id, size in enumerate(sizes):

            def values(tensors: list[GraphTensor], rows: int = size) -> dict[str, Any]:
                return {
                    t.name: ort.OrtValue.ortvalue_from_shape_and_type(
                        [rows, *t.shape[1:]], NUMPY_DTYPES[t.datatype], kind, index
                    )
                    for t in tensors
                }

            bound_inputs, bound_outputs = values(inputs), values(outputs)
            binding = session.io_binding()
            for name, value in bound_inputs.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in bound_outputs.items():
                binding.bind_ortvalue_output(name, value)
            run = ort.RunOptions()
            run.add_run_config_entry("gpu_graph_id", str(graph_id))
            staging = {t.name: np.zeros([size, *t.shape[1:]], NUMPY_DTYPES[t.datatype])
                       for t in inputs}  # fmt: skip
            self._captured[size] = _Captured(bound_inputs, bound_outputs, staging, binding, run)

    def capture_all(self) -> None:
        """Run every size once, so that each graph is captured at load, not on a request."""
        for captured in self._captured.values():
            with captured.lock:
                self._session.run_with_iobinding(captured.binding, captured.run)

    def run(self, inputs: dict[str, Any], names: list[str]) -> list[np.ndarray]:
        rows = int(next(iter(inputs.values())).shape[0])
        size = next((s for s in self.sizes if s >= rows), None)
        if size is None:
            raise ValueError(f"a batch of {rows} rows is more than the {self.sizes[-1]} captured")
        captured = self._captured[size]
        with captured.lock:  # one replay of a graph at a time: it owns its buffers
            for name, value in captured.inputs.items():
                array = inputs[name]
                if on_device(array):
                    _copy_on_device(value, array, rows)
                else:
                    staging = captured.staging[name]
                    staging[:rows] = array
                    staging[rows:] = 0
                    value.update_inplace(staging)
            self._session.run_with_iobinding(captured.binding, captured.run)
            # Copied out while the buffers are ours (on the host, numpy() is a view of them).
            return [captured.outputs[name].numpy()[:rows].copy() for name in names]


def _copy_on_device(value: Any, array: Any, rows: int) -> None:
    """``array`` (a CuPy array) into the bound device buffer ``value``, zero-padded."""
    cp = cupy()
    shape = value.shape()
    dtype = np.dtype(array.dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    memory = cp.cuda.UnownedMemory(value.data_ptr(), size, value)
    target = cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(memory, 0))
    target[:rows] = array
    target[rows:] = 0
