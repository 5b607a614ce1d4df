"""Bad candidate versions of the demo's digits model, built in code: one whose Gather goes out
of range for some inputs, one that is slower by added compute. Both answer exactly what the
model they are built from answers, where they answer at all."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUTPUT = "probabilities"
BAD_PIXEL = 16.0
"""A first pixel of this value sends the failing model's Gather out of range (its table has 16
entries: indices 0-15, and -16 to -1); the digits data never has it (the corner is blank)."""


def _int64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _with_branch(
    base: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], zero: str
) -> onnx.ModelProto:
    """``base`` with ``zero`` (a tensor of zeros computed from the input by ``nodes``) added to
    its class scores: the answers are unchanged, the branch runs on every call."""
    model = copy.deepcopy(base)
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["base_" + OUTPUT if out == OUTPUT else out for out in node.output]
    graph.node.extend(nodes)
    graph.node.append(helper.make_node("Add", ["base_" + OUTPUT, zero], [OUTPUT]))
    graph.initializer.extend(
        [*inits, numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    )
    onnx.checker.check_model(model)
    return model


def failing(base: onnx.ModelProto) -> onnx.ModelProto:
    """Fails (a Gather index out of range, a 500) every batch holding a row whose first pixel
    is ``BAD_PIXEL``."""
    table = numpy_helper.from_array(np.arange(16, dtype=np.float32), "table")
    nodes = [
        helper.make_node("Slice", ["input", "first_start", "first_end", "first_axis"], ["first"]),
        helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked_up"], axis=0),
        helper.make_node("Mul", ["looked_up", "zero"], ["nothing"]),
    ]
    inits = [table, _int64("first_start", [0]), _int64("first_end", [1]), _int64("first_axis", [1])]
    return _with_branch(base, nodes, inits, "nothing")


def slower(base: onnx.ModelProto, matmuls: int, size: int = 512) -> onnx.ModelProto:
    """Runs ``matmuls`` chained size-by-size matrix products on every call (seeded orthogonal
    weights, so the values stay bounded), tied to the input so they cannot be folded away."""
    rng = np.random.default_rng(0)
    weight, _ = np.linalg.qr(rng.standard_normal((size, size)))
    inits = [
        numpy_helper.from_array(weight.astype(np.float32), "spin_weight"),
        numpy_helper.from_array(np.eye(size, dtype=np.float32), "spin_start"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["input"], ["spin_total"], keepdims=0),
        helper.make_node("Mul", ["spin_total", "zero"], ["spin_zero"]),
        helper.make_node("Add", ["spin_start", "spin_zero"], ["spin_0"]),
    ]
    for index in range(matmuls):
        nodes.append(
            helper.make_node("MatMul", [f"spin_{index}", "spin_weight"], [f"spin_{index + 1}"])
        )
    nodes += [
        helper.make_node("ReduceSum", [f"spin_{matmuls}"], ["spin_sum"], keepdims=0),
        helper.make_node("Mul", ["spin_sum", "zero"], ["spin_nothing"]),
    ]
    return _with_branch(base, nodes, inits, "spin_nothing")


def _seconds_per_call(model: onnx.ModelProto, runs: int = 7) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as a test replica runs it (one CPU)
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {"input": np.zeros((1, 64), dtype=np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def slower_by(base: onnx.ModelProto, extra_s: float) -> tuple[onnx.ModelProto, float]:
    """A :func:`slower` model whose calls take about ``extra_s`` longer than ``base``'s on this
    machine (measured), and the extra time it measured."""
    probe = 4
    per_matmul = (_seconds_per_call(slower(base, probe)) - _seconds_per_call(base)) / probe
    matmuls = max(1, math.ceil(extra_s / max(per_matmul, 1e-6)))
    model = slower(base, matmuls)
    return model, _seconds_per_call(model) - _seconds_per_call(base)


def save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
