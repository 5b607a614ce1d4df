"""Health, metadata, config, statistics and repository index over HTTP with tritonclient."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server


@pytest.fixture
def client(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url)


def test_server_live_ready_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "serving"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_lists_ready_versions_and_full_shapes(
    client: httpclient.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("digits")
    assert metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "probabilities": [-1, 10],
        "label": [-1],
    }


def test_version_metadata_reports_the_model_file_sha256(
    client: httpclient.InferenceServerClient, server: Server
) -> None:
    metadata = client.get_model_metadata("digits", model_version="1")
    expected = hashlib.sha256((server.repository / "digits/1/model.onnx").read_bytes()).hexdigest()
    assert metadata["versions"] == ["1"]
    assert metadata["parameters"]["sha256"] == expected
    assert metadata["parameters"]["dataset"] == "sklearn.datasets.load_digits"


def test_model_ready_per_model_and_version(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert client.is_model_ready("digits", "2")
    assert not client.is_model_ready("corrupt")
    assert not client.is_model_ready("corrupt", "1")
    assert not client.is_model_ready("no_such_model")


def test_model_config_in_triton_form(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("digits")
    assert config["name"] == "digits"
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["64"]}]
    assert [o["data_type"] for o in config["output"]] == ["TYPE_FP32", "TYPE_INT64"]
    assert config["version_policy"] == {"all": {}}
    assert config["parameters"]["execution_providers"]["string_value"] == "CPUExecutionProvider"


def test_triton_pbtxt_config_is_honoured(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("triton_add_sub")
    assert config["max_batch_size"] == 4
    assert config["instance_group"][0]["count"] == 2
    assert config["parameters"]["git_sha"] == {"string_value": "abc123"}
    assert client.get_model_metadata("triton_add_sub")["versions"] == ["3"]
    data = np.ones((5, 16), dtype=np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [5, 16], "FP32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    with pytest.raises(InferenceServerException, match="above the model's max_batch_size 4"):
        client.infer("triton_add_sub", inputs)


def test_statistics_count_inferences(client: httpclient.InferenceServerClient) -> None:
    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics("add_sub")["model_stats"][0]
        return stats["inference_count"], stats["inference_stats"]["success"]["count"]

    before_rows, before_requests = counts()
    data = np.zeros((3, 16), dtype=np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [3, 16], "FP32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    client.infer("add_sub", inputs)
    client.infer("add_sub", inputs)
    rows, requests = counts()
    assert rows - before_rows == 6
    assert requests - before_requests == 2
    everything = client.get_inference_statistics()["model_stats"]
    assert {"add_sub", "digits"} <= {s["name"] for s in everything}
    one = client.get_inference_statistics("digits", "1")["model_stats"]
    assert [(s["name"], s["version"]) for s in one] == [("digits", "1")]


def test_repository_index_shows_broken_models_with_reasons(
    client: httpclient.InferenceServerClient,
) -> None:
    index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index()}
    assert index[("digits", "2")]["state"] == "READY"
    corrupt = index[("corrupt", "1")]
    assert corrupt["state"] == "UNAVAILABLE"
    assert "cannot load corrupt/1/model.onnx" in corrupt["reason"]
    assert "not found" in index[("missing_file", "1")]["reason"]
    assert "is FP64, the graph has FP32" in index[("mismatch", "1")]["reason"]
    assert "invalid config" in index[("bad_config", "")]["reason"]
    assert "max_batch_size" in index[("bad_config", "")]["reason"]
