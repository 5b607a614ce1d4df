"""Server-side processing on the CPU path: a CNN whose config names image preprocessing and
softmax + top-k takes raw ``uint8`` images over HTTP and gRPC and answers as the same graph
does for images preprocessed by the client; a model that asks for CUDA where there is none
serves on CPU and says so."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import pytest

from kernels import ImageSteps
from tests.integration.clients import In, Out, V2Client
from tests.integration.conftest import Server, running_server
from tests.models import cnn
from tests.references import reference

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STEPS = ImageSteps(mean=MEAN, std=STD, resize=(10, 10), crop=(8, 8))
PROCESSING = f"""
max_batch_size: 8
preprocess:
  image: {{input: input, mean: {list(MEAN)}, std: {list(STD)}, resize: [10, 10], crop: [8, 8]}}
postprocess:
  softmax_topk: {{output: logits, k: 3}}
"""


@pytest.fixture(scope="module")
def processing(ray_serve: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("processing") / "repo"
    for name, config in [
        ("cnn", PROCESSING),
        ("cnn_plain", "max_batch_size: 8\n"),
        ("cnn_gpu", "max_batch_size: 8\nexecution_providers: [cuda, cpu]\n"),
    ]:
        (repo / name / "1").mkdir(parents=True)
        onnx.save_model(cnn(), repo / name / "1" / "model.onnx")
        (repo / name / "config.yaml").write_text(config)
    with running_server("processing", repo) as started:
        yield started


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_raw_uint8_images_answer_as_client_side_preprocessing_does(
    processing: Server, protocol: str
) -> None:
    client = V2Client(protocol, processing.http_url, processing.grpc_url)
    images = np.random.default_rng(11).integers(0, 256, size=(3, 13, 11, 3), dtype=np.uint8)
    served = client.infer(
        "cnn", [In("input", images, "UINT8")],
        outputs=[Out("logits"), Out("logits_topk_indices"), Out("logits_topk_scores")],
    ).outputs  # fmt: skip
    by_client = reference(images, STEPS).astype(np.float32)
    plain = client.infer("cnn_plain", [In("input", by_client, "FP32")]).outputs
    np.testing.assert_allclose(served["logits"], plain["logits"], rtol=1e-4, atol=1e-4)
    logits = plain["logits"].astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(served["logits_topk_indices"], best)
    np.testing.assert_allclose(
        served["logits_topk_scores"], np.take_along_axis(probabilities, best, axis=1), rtol=1e-4
    )


def test_the_processed_model_describes_what_clients_send(processing: Server) -> None:
    client = V2Client("http", processing.http_url, processing.grpc_url)
    metadata = client.model_metadata("cnn")
    (image,) = metadata["inputs"]
    assert (image["name"], image["datatype"], image["shape"]) == ("input", "UINT8", [-1, -1, -1, 3])
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs == {
        "logits": ("FP32", [-1, 10]),
        "logits_topk_indices": ("INT64", [-1, 3]),
        "logits_topk_scores": ("FP32", [-1, 3]),
    }
    too_small = np.zeros((1, 4, 4, 3), dtype=np.uint8)  # resized to 10x10 first: fine
    assert client.infer("cnn", [In("input", too_small, "UINT8")]).outputs["logits"].shape == (1, 10)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_asking_for_cuda_without_it_serves_on_cpu_and_says_so(
    processing: Server, protocol: str
) -> None:
    client = V2Client(protocol, processing.http_url, processing.grpc_url)
    config = client.model_config("cnn_gpu")
    parameters = config["parameters"]
    assert parameters["execution_providers"]["string_value"] == "CPUExecutionProvider"
    reason = parameters["execution_fallback"]["string_value"]
    assert "cuda is not in this onnxruntime build" in reason and "serving on CPU" in reason
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    if protocol == "http":  # gRPC's ModelMetadataResponse has no parameters
        metadata = client.model_metadata("cnn_gpu", "1")
        assert metadata["parameters"]["execution_fallback"] == reason
    images = np.ones((1, 3, 8, 8), dtype=np.float32)
    answer = client.infer("cnn_gpu", [In("input", images, "FP32")])
    assert answer.outputs["logits"].shape == (1, 10)
