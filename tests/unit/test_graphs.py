"""CUDA graphs' bookkeeping, on the CPU: per-size bound buffers, padding and slicing give what
a plain run gives; models that cannot be captured run without graphs and say why."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from serving.models.runtimes.base import ModelFile
from serving.models.runtimes.graphs import GraphRunner, batch_sizes
from serving.models.runtimes.onnx import GpuSettings, ONNXRuntime, SessionOptions
from tests.models import cnn


@pytest.fixture
def source(tmp_path: Path) -> ModelFile:
    path = tmp_path / "model.onnx"
    onnx.save_model(cnn(), path)
    return ModelFile.read(path)


def test_the_sizes_captured() -> None:
    assert batch_sizes(64, (24,)) == (1, 2, 4, 8, 16, 24, 32, 64)
    assert batch_sizes(6) == (1, 2, 4, 6)
    assert batch_sizes(1) == (1,)


def test_padded_replays_give_what_a_plain_run_gives(source: ModelFile) -> None:
    """The runner's path with CPU buffers: each batch copied into the smallest size that
    holds it, zero-padded, the padding sliced off; concurrent callers each get their own."""
    plain = ONNXRuntime(source, providers=("cpu",), options=SessionOptions())
    runner = GraphRunner(plain._session, plain.inputs, plain.outputs, ("cpu", 0), (1, 2, 4, 8))
    runner.capture_all()
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((rows, 3, 8, 8)).astype(np.float32) for rows in range(1, 9)]
    for batch in batches:
        (got,) = runner.run({"input": batch}, ["logits"])
        (want,) = plain.infer({"input": batch}, ["logits"])
        assert got.shape == (len(batch), 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda b: runner.run({"input": b}, ["logits"])[0], batches * 4))
    for batch, answer in zip(batches * 4, answers, strict=True):
        np.testing.assert_allclose(answer, plain.infer({"input": batch}, ["logits"])[0],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="9 rows is more than the 8 captured"):
        runner.run({"input": np.zeros((9, 3, 8, 8), np.float32)}, ["logits"])
    plain.close()


def test_graphs_asked_for_on_cpu_are_off_and_say_why(source: ModelFile) -> None:
    runtime = ONNXRuntime(source, providers=("cuda", "cpu"), options=SessionOptions(),
                          gpu=GpuSettings(graphs=True))  # fmt: skip
    assert runtime.cuda_graphs == "off: the session runs on CPU"
    assert runtime.infer({"input": np.zeros((2, 3, 8, 8), np.float32)}, ["logits"])[0].shape == (
        2, 10,
    )  # fmt: skip
    runtime.close()


def test_a_model_with_control_flow_does_not_qualify(tmp_path: Path) -> None:
    def branch(value: float) -> onnx.GraphProto:
        constant = helper.make_node("Constant", [], ["y"], value_floats=[value])
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        return helper.make_graph([constant], f"b{value}", [], [out])

    condition = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch(1.0), else_branch=branch(0.0))
    model = helper.make_model(helper.make_graph([node], "if", [condition], [result]),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    path = tmp_path / "if.onnx"
    onnx.save_model(model, path)
    runtime = ONNXRuntime(ModelFile.read(path), providers=("cpu",), options=SessionOptions(),
                          gpu=GpuSettings(graphs=True))  # fmt: skip
    assert runtime.cuda_graphs == "off: it has control flow (If), which a CUDA graph cannot capture"
    runtime.close()
