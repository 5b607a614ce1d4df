"""Processing steps around a real ONNX Runtime session: what the wrapped runtime says it takes
and gives, and the loads that refuse steps that do not fit the graph, or report a fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from serving.config import ModelConfig
from serving.errors import InvalidInputError
from serving.models.loader import LoadError, load_version
from serving.models.runtimes.onnx import open_offline
from tests.models import cnn


def load(tmp_path: Path, config: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "cnn" / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(cnn(), path)
    model = ModelConfig.model_validate(yaml.safe_load(config))
    return load_version(path, model, open_offline, shown="cnn/1/model.onnx")


IMAGE = "preprocess: {image: {input: input, mean: [0, 0, 0], std: [1, 1, 1], crop: [8, 8]}}\n"


def test_a_crop_takes_any_image_at_least_its_size(tmp_path: Path) -> None:
    loaded = load(tmp_path, IMAGE)  # warmed up with an 8x8 image, the smallest it takes
    (image,) = loaded.signature.inputs
    assert (image.datatype, image.dims) == ("UINT8", (-1, -1, 3))
    big = np.zeros((2, 9, 12, 3), dtype=np.uint8)
    assert loaded.runtime.infer({"input": big}, ["logits"])[0].shape == (2, 10)
    with pytest.raises(InvalidInputError, match=r"input 'input': crop \[8, 8\] is larger"):
        loaded.runtime.infer({"input": np.zeros((1, 7, 12, 3), dtype=np.uint8)}, ["logits"])
    loaded.runtime.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (IMAGE.replace("input: input", "input: pixels"), "preprocess input 'pixels' is not in"),
        (IMAGE.replace("[0, 0, 0], std: [1, 1, 1]", "[0], std: [1]"), "has 3 channels, mean"),
        (IMAGE.replace("crop: [8, 8]", "resize: [9, 9]"), r"makes \[9, 9\] images, the graph"),
        ("postprocess: {softmax_topk: {output: logits, k: 11}}", "k 11 is more than the 10"),
        ("postprocess: {softmax_topk: {output: nope}}", "postprocess output 'nope' is not in"),
    ],
)
def test_steps_that_do_not_fit_the_graph_fail_the_load(
    tmp_path: Path, config: str, message: str
) -> None:
    with pytest.raises(LoadError, match="config does not match cnn/1/model.onnx: .*" + message):
        load(tmp_path, config)


def test_asking_for_cuda_without_it_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.models.loader"):
        loaded = load(tmp_path, "execution_providers: [cuda, cpu]\n")
    assert loaded.runtime.providers == ["CPUExecutionProvider"]
    assert "cuda is not in this onnxruntime build" in loaded.runtime.fallback
    assert any("serving on CPU" in r.getMessage() for r in caplog.records)
    loaded.runtime.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="serving.models.loader"):
        quiet = load(tmp_path, "{}")  # the default preference: said in config, not warned
    assert quiet.runtime.fallback is not None and not caplog.records
    quiet.runtime.close()


def test_gpu_providers_without_their_libraries_are_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """onnxruntime-gpu on a machine without TensorRT or an NVIDIA driver: ONNX Runtime is not
    asked (it would print a page of errors per model), and the reason names the library."""
    from serving.models.runtimes import onnx as runtime

    names = [runtime.PROVIDERS[p] for p in ("tensorrt", "cuda", "cpu")]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: names)
    lacking = {"tensorrt": "libnvinfer.so.10", "cuda": "libcuda.so.1"}
    monkeypatch.setattr(runtime, "missing_library", lacking.get)
    assert runtime.choose_providers(("tensorrt", "cuda", "cpu")) == ["CPUExecutionProvider"]
    reason = runtime.fallback_reason(("tensorrt", "cuda", "cpu"), ["CPUExecutionProvider"])
    assert reason == (
        "tensorrt needs libnvinfer.so.10, which this machine does not have; "
        "cuda needs libcuda.so.1, which this machine does not have: serving on CPU"
    )


def test_gpu_providers_get_their_options_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the CUDA and TensorRT providers are told (they are not on this machine: the
    options are checked as ONNX Runtime receives them)."""
    from serving.models.runtimes import onnx as runtime
    from serving.models.runtimes.base import ModelFile

    monkeypatch.setenv("SERVING_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.onnx"
    onnx.save_model(cnn(), path)
    source = ModelFile.read(path)
    model = ModelConfig.model_validate(yaml.safe_load(
        "max_batch_size: 32\n"
        "dynamic_batching: {preferred_batch_sizes: [4, 16]}\n"
        "cuda: {memory_limit_mb: 2048, conv_algo_search: heuristic}\n"
        "tensorrt: {fp16: true}\n"
    ))  # fmt: skip
    chosen = [runtime.PROVIDERS[p] for p in ("tensorrt", "cuda", "cpu")]
    configured = runtime.provider_options(chosen, runtime.GpuSettings.of(model), source)
    assert [name for name, _ in configured] == chosen
    (_, trt_options), (_, cuda_options), (_, cpu_options) = configured
    assert cuda_options == {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC",
                            "gpu_mem_limit": str(2048 << 20)}  # fmt: skip
    assert cpu_options == {}
    folder = Path(trt_options.pop("trt_engine_cache_path"))
    assert folder.parent == tmp_path / "cache" / "tensorrt"
    assert folder.name.startswith(source.sha256[:16] + "-trt")  # model, TensorRT, GPU, profile
    assert trt_options == {
        "device_id": "0",
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(folder),
        "trt_profile_min_shapes": "input:1x3x8x8",
        "trt_profile_opt_shapes": "input:16x3x8x8",
        "trt_profile_max_shapes": "input:32x3x8x8",
    }


def test_io_binding_gives_what_a_plain_run_gives(tmp_path: Path) -> None:
    """The binding path, with CPU buffers here (on a GPU the same code binds device ones)."""
    from serving.models.runtimes.base import ModelFile
    from serving.models.runtimes.onnx import GpuSettings, ONNXRuntime, SessionOptions

    path = tmp_path / "model.onnx"
    onnx.save_model(cnn(), path)
    source = ModelFile.read(path)
    plain = ONNXRuntime(source, providers=("cpu",), options=SessionOptions())
    bound = ONNXRuntime(source, providers=("cpu",), options=SessionOptions(),
                        gpu=GpuSettings(io_binding=True))  # fmt: skip
    assert bound.io_binding and not plain.io_binding  # off on CPU unless asked for
    images = np.random.default_rng(3).standard_normal((8, 8, 3, 5)).astype(np.float32)
    strided = images.transpose(3, 2, 0, 1)  # a view: not contiguous
    for batch in (strided, strided[:1], np.ascontiguousarray(strided)):
        (want,) = plain.infer({"input": batch}, ["logits"])
        (got,) = bound.infer({"input": batch}, ["logits"])
        assert got.shape == (len(batch), 10)
        np.testing.assert_array_equal(got, want)
    plain.close()
    bound.close()
