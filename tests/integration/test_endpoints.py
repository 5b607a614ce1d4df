"""Health, metadata, config, statistics and repository index, over every protocol."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from serving.errors import ErrorCode
from tests.integration.clients import In, V2Client, error_code
from tests.integration.conftest import Server


def test_server_live_ready_and_metadata(client: V2Client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.server_metadata()
    assert metadata["name"] == "serving"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_lists_ready_versions_and_full_shapes(client: V2Client) -> None:
    metadata = client.model_metadata("digits")
    assert metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "probabilities": [-1, 10],
        "label": [-1],
    }


def test_version_metadata_and_config_report_the_model_file_sha256(
    client: V2Client, server: Server
) -> None:
    expected = hashlib.sha256((server.repository / "digits/1/model.onnx").read_bytes()).hexdigest()
    assert client.model_metadata("digits", "1")["versions"] == ["1"]
    config = client.model_config("digits", "1")
    assert config["parameters"]["sha256"] == {"string_value": expected}
    if client.protocol == "http":  # the gRPC metadata message has no parameters field
        assert client.model_metadata("digits", "1")["parameters"]["sha256"] == expected


def test_model_ready_per_model_and_version(client: V2Client) -> None:
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert client.is_model_ready("digits", "2")
    assert not client.is_model_ready("corrupt")
    assert not client.is_model_ready("corrupt", "1")


def test_model_ready_of_unknown_model_or_version_is_false(client: V2Client) -> None:
    """As against Triton: gRPC answers OK with ready false (tritonclient.http reads any
    non-200 as not ready), so ``is_model_ready`` returns False instead of raising."""
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("digits", "7")


@pytest.mark.parametrize("version", ["abc", "0", "01", "-1", "1.5", "²", "9" * 30, "1 "])
def test_malformed_versions_get_the_same_answer_on_every_transport(
    server: Server, version: str
) -> None:
    answers = set()
    row = [In("input", np.zeros((1, 64), np.float32), "FP32")]
    for protocol in ("http", "grpc"):
        client = V2Client(protocol, server.http_url, server.grpc_url)
        sent = quote(version) if protocol == "http" else version  # tritonclient.http does not
        calls = [
            (client.model_metadata, ("digits", sent), {}),
            (client.model_config, ("digits", sent), {}),
            (client.infer, ("digits", row), {"version": sent}),
        ]
        for call, args, kwargs in calls:
            with pytest.raises(InferenceServerException) as caught:
                call(*args, **kwargs)  # type: ignore[operator]
            assert error_code(caught.value) is ErrorCode.INVALID_ARGUMENT
            answers.add(caught.value.message())
    assert len(answers) == 1, answers
    assert "model version must be a positive integer" in answers.pop()


def test_model_config_in_triton_form(client: V2Client) -> None:
    config = client.model_config("digits")
    assert config["name"] == "digits"
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert [o["data_type"] for o in config["output"]] == ["TYPE_FP32", "TYPE_INT64"]
    assert config["version_policy"] == {"all": {}}
    assert config["parameters"]["execution_providers"]["string_value"] == "CPUExecutionProvider"


def test_triton_pbtxt_config_is_honoured(client: V2Client) -> None:
    config = client.model_config("triton_add_sub")
    assert config["max_batch_size"] == 4
    assert config["instance_group"][0]["count"] == 2
    assert config["parameters"]["git_sha"] == {"string_value": "abc123"}
    assert client.model_metadata("triton_add_sub")["versions"] == ["3"]
    data = np.ones((5, 16), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="above the model's max_batch_size 4"):
        client.infer("triton_add_sub", [In("INPUT0", data, "FP32"), In("INPUT1", data, "FP32")])


def test_model_config_carries_dynamic_batching_as_triton_does(client: V2Client) -> None:
    """perf_analyzer and model_analyzer read it; 64-bit fields are numbers, an empty preferred
    list reads as [max_batch_size], the queue policy is the one in effect."""
    batching = client.model_config("batched_digits")["dynamic_batching"]
    assert batching["preferred_batch_size"] == [64]
    assert int(batching["max_queue_delay_microseconds"]) == 5000
    policy = batching["default_queue_policy"]
    assert int(policy["max_queue_size"]) == 1024
    assert policy.get("timeout_action", "REJECT") == "REJECT"  # gRPC's JSON leaves defaults out
    assert "dynamic_batching" not in client.model_config("digits")


def test_statistics_count_inferences(client: V2Client) -> None:
    def counts() -> tuple[int, int]:
        stats = client.statistics("add_sub")[0]
        return stats.get("inference_count", 0), stats["inference_stats"]["success"].get("count", 0)

    before_rows, before_requests = counts()
    data = np.zeros((3, 16), dtype=np.float32)
    inputs = [In("INPUT0", data, "FP32"), In("INPUT1", data, "FP32")]
    client.infer("add_sub", inputs)
    client.infer("add_sub", inputs)
    rows, requests = counts()
    assert rows - before_rows == 6
    assert requests - before_requests == 2
    assert {"add_sub", "digits"} <= {s["name"] for s in client.statistics()}
    one = client.statistics("digits", "1")
    assert [(s["name"], s["version"]) for s in one] == [("digits", "1")]


def test_repository_index_shows_broken_models_with_reasons(client: V2Client) -> None:
    index = {(m["name"], m.get("version", "")): m for m in client.repository_index()}
    assert index[("digits", "2")]["state"] == "READY"
    corrupt = index[("corrupt", "1")]
    assert corrupt["state"] == "UNAVAILABLE"
    assert "cannot load corrupt/1/model.onnx" in corrupt["reason"]
    assert "not found" in index[("missing_file", "1")]["reason"]
    assert "is FP64, the graph has FP32" in index[("mismatch", "1")]["reason"]
    assert "invalid config" in index[("bad_config", "")]["reason"]
    assert "max_batch_size" in index[("bad_config", "")]["reason"]
