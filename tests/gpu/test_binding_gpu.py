"""IO binding on the GPU: host and device inputs give what a plain run gives, and the
preprocessing kernel feeds the session on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from kernels import ImageSteps, preprocess_images
from serving.models.runtimes.base import ModelFile
from serving.models.runtimes.onnx import GpuSettings, ONNXRuntime, SessionOptions
from tests.models import cnn


@pytest.fixture
def source(tmp_path: Path) -> ModelFile:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    path = tmp_path / "model.onnx"
    onnx.save_model(cnn(), path)
    return ModelFile.read(path)


def test_bound_runs_on_cuda_match_plain_ones(cp: Any, source: ModelFile) -> None:
    plain = ONNXRuntime(source, providers=("cuda",), options=SessionOptions(),
                        gpu=GpuSettings(io_binding=False))  # fmt: skip
    bound = ONNXRuntime(source, providers=("cuda",), options=SessionOptions())
    assert bound.device == ("cuda", 0) and bound.io_binding  # on by default on CUDA
    images = np.random.default_rng().standard_normal((7, 3, 8, 8)).astype(np.float32)
    (want,) = plain.infer({"input": images}, ["logits"])
    (from_host,) = bound.infer({"input": images}, ["logits"])
    (from_device,) = bound.infer({"input": cp.asarray(images)}, ["logits"])
    np.testing.assert_allclose(from_host, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_device, want, rtol=1e-5, atol=1e-5)


def test_the_kernel_feeds_the_session_on_the_device(cp: Any, source: ModelFile) -> None:
    steps = ImageSteps(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=(10, 10),
                       crop=(8, 8))  # fmt: skip
    raw = np.random.default_rng().integers(0, 256, (5, 13, 11, 3), dtype=np.uint8)
    session = ONNXRuntime(source, providers=("cuda",), options=SessionOptions())
    (on_device,) = session.infer({"input": preprocess_images(cp.asarray(raw), steps)}, ["logits"])
    (on_host,) = session.infer({"input": preprocess_images(raw, steps)}, ["logits"])
    np.testing.assert_allclose(on_device, on_host, rtol=1e-4, atol=1e-4)


def test_cuda_graph_replays_match_plain_runs(cp: Any, source: ModelFile) -> None:
    plain = ONNXRuntime(source, providers=("cuda",), options=SessionOptions(),
                        gpu=GpuSettings(io_binding=False))  # fmt: skip
    graphed = ONNXRuntime(source, providers=("cuda",), options=SessionOptions(),
                          gpu=GpuSettings(graphs=True, max_batch_size=16))  # fmt: skip
    assert graphed.cuda_graphs is not None and graphed.cuda_graphs.startswith("on"), (
        graphed.cuda_graphs
    )
    rng = np.random.default_rng()
    for rows in (1, 3, 8, 13, 16):
        images = rng.standard_normal((rows, 3, 8, 8)).astype(np.float32)
        (want,) = plain.infer({"input": images}, ["logits"])
        for fed in (images, cp.asarray(images)):
            (got,) = graphed.infer({"input": fed}, ["logits"])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
