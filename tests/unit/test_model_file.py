"""What a version loads: the bytes that were hashed, and external data only from inside its
version folder (real ONNX Runtime sessions over models built here)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.config import ModelConfig
from serving.models.loader import LoadError, load_version
from serving.models.runtimes.base import ModelFile
from serving.models.runtimes.onnx import ONNXRuntime, SessionOptions, open_offline


def add_model(offset: float) -> onnx.ModelProto:
    """y = x + w, with w a 256-float initializer of ``offset``."""
    weight = numpy_helper.from_array(np.full((1, 256), offset, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 256])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(runtime: ONNXRuntime) -> float:
    return float(runtime.infer({"x": np.zeros((1, 256), np.float32)}, ["y"])[0][0, 0])


def save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    """``model`` at ``path`` with its weight stored at ``location`` (any string, as a hostile
    file could name it), relative to ``path``'s folder."""
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin",
                    size_threshold=0)  # fmt: skip
    proto = onnx.load_model(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(proto.SerializeToString())


def version_folder(tmp_path: Path, name: str = "m") -> Path:
    folder = tmp_path / "repo" / name / "1"
    folder.mkdir(parents=True)
    return folder


def load(path: Path) -> float:
    loaded = load_version(path, ModelConfig(), open_offline, shown="m/1/model.onnx")
    try:
        return run(loaded.runtime)  # type: ignore[arg-type]
    finally:
        loaded.runtime.close()


def test_the_session_runs_the_bytes_that_were_hashed(tmp_path: Path) -> None:
    path = version_folder(tmp_path) / "model.onnx"
    onnx.save_model(add_model(1.0), path)
    source = ModelFile.read(path)
    onnx.save_model(add_model(2.0), path)  # replaced between the read and the load
    runtime = ONNXRuntime(source, providers=("cpu",), options=SessionOptions())
    assert run(runtime) == 1.0
    assert source.sha256 != ModelFile.read(path).sha256
    runtime.close()


def test_external_data_inside_the_version_folder_loads(tmp_path: Path) -> None:
    folder = version_folder(tmp_path)
    save_external(add_model(3.0), folder / "model.onnx", "weights.bin")
    assert load(folder / "model.onnx") == 3.0
    (folder / "data").mkdir()
    (folder / "weights.bin").rename(folder / "data" / "weights.bin")
    save_external(add_model(3.0), folder / "model.onnx", "data/weights.bin")
    (folder / "weights.bin").unlink()
    assert load(folder / "model.onnx") == 3.0


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "other-version"])
def test_external_data_from_outside_the_version_folder_is_refused(tmp_path: Path, how: str) -> None:
    folder = version_folder(tmp_path)
    secret = version_folder(tmp_path, "other") / "weights.bin"
    save_external(add_model(4.0), secret.parent / "model.onnx", "weights.bin")
    sibling = folder.parent / "2"
    sibling.mkdir()
    (sibling / "weights.bin").write_bytes(secret.read_bytes())
    location = {
        "dotdot": "../../other/1/weights.bin",
        "absolute": str(secret),
        "symlink": "link.bin",
        "other-version": "../2/weights.bin",
    }[how]
    if how == "symlink":
        os.symlink(secret, folder / "link.bin")
    save_external(add_model(4.0), folder / "model.onnx", location)
    (folder / "weights.bin").unlink()
    with pytest.raises(LoadError, match=r"tensor 'w' keeps its data at '.*', outside the model"):
        load(folder / "model.onnx")
