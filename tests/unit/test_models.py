"""The model host with fake runtimes: routing to versions, faults, statistics."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serving.errors import InternalError, ModelNotFoundError, ModelNotReadyError
from serving.models import ModelHost
from serving.types import InferenceRequest, Tensor
from tests.unit.fakes import ErrorRuntime, SumRuntime


def repo(tmp_path: Path, versions: dict[str, list[int]]) -> Path:
    for name, numbers in versions.items():
        for number in numbers:
            (tmp_path / name / str(number)).mkdir(parents=True)
            (tmp_path / name / str(number) / "model.onnx").write_bytes(b"fake")
        (tmp_path / name / "config.yaml").write_text("version_policy: all\n")
    return tmp_path


def load(path: Path, runtime: type[SumRuntime] = SumRuntime) -> ModelHost:
    return ModelHost.load(path, lambda p, c: runtime(), ThreadPoolExecutor(1))


def request(model: str, version: str | None = None) -> InferenceRequest:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    return InferenceRequest(model, version, [Tensor("x", "FP32", x)])


def test_default_and_explicit_versions(tmp_path: Path) -> None:
    host = load(repo(tmp_path, {"m": [1, 4]}))
    assert host.resolve("m", None).version == 4
    response = asyncio.run(host.infer(request("m", "1")))
    assert response.model_version == "1"
    np.testing.assert_array_equal(response.outputs[0].data, [6, 15])
    stats = host.resolve("m", "1").stats
    assert (stats.inference_count, stats.execution_count, stats.success.count) == (2, 1, 1)


def test_unknown_model_and_version(tmp_path: Path) -> None:
    host = load(repo(tmp_path, {"m": [1]}))
    with pytest.raises(ModelNotFoundError, match="unknown model 'x' \\(available models: m\\)"):
        host.resolve("x", None)
    with pytest.raises(ModelNotFoundError, match="unknown version '2'"):
        host.resolve("m", "2")


def test_runtime_fault_is_internal_and_hides_details(tmp_path: Path) -> None:
    host = load(repo(tmp_path, {"m": [1]}), ErrorRuntime)
    with pytest.raises(InternalError) as caught:
        asyncio.run(host.infer(request("m")))
    assert "secret" not in caught.value.message
    assert host.resolve("m", None).stats.fail.count == 1


def test_factory_failure_makes_the_version_unavailable(tmp_path: Path) -> None:
    def factory(path: Path, config: object) -> SumRuntime:
        raise ValueError(f"bad file {path}")

    host = ModelHost.load(repo(tmp_path, {"m": [1]}), factory, ThreadPoolExecutor(1))
    version = host.resolve("m", "1")
    assert not version.ready
    assert version.reason == "cannot load m/1/model.onnx: bad file m/1/model.onnx"
    with pytest.raises(ModelNotReadyError, match="model 'm' is not ready"):
        host.resolve("m", None)
