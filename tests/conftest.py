"""Fixtures shared by every test tier: the demo repository, generated once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving import demo


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.build(tmp_path_factory.mktemp("demo") / "repo")


@pytest.fixture(scope="session")
def test_repository(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo plus models that are broken in each way the server must survive."""
    repo = tmp_path_factory.mktemp("test-repo") / "repo"
    shutil.copytree(demo_repository, repo)
    corrupt = repo / "corrupt" / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "model.onnx").write_bytes(b"this is not an onnx model")
    missing = repo / "missing_file" / "1"
    missing.mkdir(parents=True)
    mismatch = repo / "mismatch"
    shutil.copytree(demo_repository / "add_sub" / "1", mismatch / "1")
    (mismatch / "config.yaml").write_text(
        "inputs:\n  - {name: INPUT0, datatype: FP64, dims: [16]}\n"
    )
    bad_config = repo / "bad_config"
    shutil.copytree(demo_repository / "add_sub" / "1", bad_config / "1")
    (bad_config / "config.yaml").write_text("max_batch_size: -3\nunknown_field: 1\n")
    triton = repo / "triton_add_sub"
    shutil.copytree(demo_repository / "add_sub" / "1", triton / "3")
    (triton / "config.pbtxt").write_text(
        'name: "triton_add_sub"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },\n'
        '        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
        'parameters { key: "git_sha" value: { string_value: "abc123" } }\n'
        'model_warmup [ { name: "w" batch_size: 1 } ]\n'
    )
    _save_gather_model(repo / "runtime_fault" / "1" / "model.onnx")
    batched = repo / "batched_digits"
    shutil.copytree(demo_repository / "digits" / "2", batched / "1")
    (batched / "config.yaml").write_text(
        "max_batch_size: 64\ndynamic_batching:\n  max_queue_delay_ms: 5\n"
    )
    slow = repo / "slow_batched"
    _save_slow_model(slow / "1" / "model.onnx")
    (slow / "config.yaml").write_text(
        "max_batch_size: 4\ndynamic_batching: {max_queue_delay_ms: 0, max_queue_size: 2}\n"
    )
    return repo


SLOW_LAYERS = 120


def _save_slow_model(path: Path) -> None:
    """y = x, after a chain of 512x512 matrix products that depends on x (so it is not folded).

    Tens of milliseconds per batch whatever its size: long enough to fill a queue behind it.
    """
    size = 512
    rng = np.random.default_rng(0)
    weight = (rng.normal(size=(size, size)) / np.sqrt(size)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Mul", ["A", "s"], ["h0"]),
    ]
    for layer in range(SLOW_LAYERS):
        nodes.append(helper.make_node("MatMul", [f"h{layer}", "A"], [f"h{layer + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"h{SLOW_LAYERS}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(weight, "A"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
    _save(graph, path)


def _save_gather_model(path: Path) -> None:
    """Picks from a 4-element table: an index out of range fails inside ONNX Runtime."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "indices"], ["values"], axis=0)],
        "runtime_fault",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.arange(4, dtype=np.float32), "table")],
    )
    _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", demo.OPSET)])
    model.ir_version = demo.IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
