"""Inference over HTTP with tritonclient: datatypes, JSON/binary mixes, versions, accuracy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.protocol.datatypes import DATATYPES, NUMPY_DTYPES
from tests.integration.conftest import Server


@pytest.fixture
def client(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url)


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    if datatype == "BYTES":
        words = [f"w{i}-é-{rng.integers(1000)}".encode() for i in range(count)]
        return np.array(words, dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def tensor(name: str, data: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    item = httpclient.InferInput(name, list(data.shape), datatype)
    item.set_data_from_numpy(data, binary_data=binary)
    return item


def reference(path: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, feed)  # type: ignore[no-any-return]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(
    client: httpclient.InferenceServerClient, datatype: str, binary_in: bool, binary_out: bool
) -> None:
    data = sample(datatype, (2, 3))
    result = client.infer(
        f"identity_{datatype.lower()}",
        [tensor("INPUT", data, datatype, binary_in)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT", binary_data=binary_out)],
    )
    output = result.as_numpy("OUTPUT")
    assert output.shape == data.shape
    if datatype == "BYTES":
        decoded = [x.decode() if isinstance(x, bytes) else x for x in output.reshape(-1)]
        assert decoded == [x.decode() for x in data.reshape(-1)]
    else:
        assert output.dtype == data.dtype
        np.testing.assert_array_equal(output, data)
    assert result.get_output("OUTPUT")["datatype"] == datatype


def test_json_and_binary_inputs_and_outputs_mix(
    client: httpclient.InferenceServerClient, server: Server
) -> None:
    a = sample("FP32", (4, 16), seed=1)
    b = sample("FP32", (4, 16), seed=2)
    result = client.infer(
        "add_sub",
        [tensor("INPUT0", a, "FP32", True), tensor("INPUT1", b, "FP32", False)],
        outputs=[
            httpclient.InferRequestedOutput("OUTPUT0", binary_data=False),
            httpclient.InferRequestedOutput("OUTPUT1", binary_data=True),
        ],
        request_id="mix-42",
    )
    response = result.get_response()
    assert response["id"] == "mix-42"
    assert "data" in result.get_output("OUTPUT0")
    assert result.get_output("OUTPUT1")["parameters"]["binary_data_size"] == a.nbytes
    expected = reference(
        str(server.repository / "add_sub/1/model.onnx"), {"INPUT0": a, "INPUT1": b}
    )
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected[0], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), expected[1])


def test_requested_outputs_limit_the_response(client: httpclient.InferenceServerClient) -> None:
    a = sample("FP32", (1, 16))
    result = client.infer(
        "add_sub",
        [tensor("INPUT0", a, "FP32", True), tensor("INPUT1", a, "FP32", True)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT1")],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros_like(a))


def test_gzip_compressed_request(client: httpclient.InferenceServerClient) -> None:
    a = sample("FP32", (2, 16), seed=3)
    result = client.infer(
        "add_sub",
        [tensor("INPUT0", a, "FP32", True), tensor("INPUT1", a, "FP32", False)],
        request_compression_algorithm="gzip",
    )
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a * 2, rtol=1e-6)


@pytest.mark.parametrize("version", ["1", "2"])
def test_explicit_version_matches_in_process_onnxruntime(
    client: httpclient.InferenceServerClient, server: Server, version: str
) -> None:
    x = np.load(server.repository / "digits/evaluation.npz")["inputs"][:32]
    result = client.infer("digits", [tensor("input", x, "FP32", True)], model_version=version)
    assert result.get_response()["model_version"] == version
    expected = reference(str(server.repository / f"digits/{version}/model.onnx"), {"input": x})
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.as_numpy("label"), expected[1])


def test_versions_differ_and_default_is_highest(
    client: httpclient.InferenceServerClient, server: Server
) -> None:
    x = np.load(server.repository / "digits/evaluation.npz")["inputs"][:64]
    outputs = {
        v: client.infer("digits", [tensor("input", x, "FP32", True)], model_version=v)
        for v in ("1", "2", "")
    }
    assert outputs[""].get_response()["model_version"] == "2"
    np.testing.assert_array_equal(
        outputs[""].as_numpy("probabilities"), outputs["2"].as_numpy("probabilities")
    )
    assert not np.allclose(
        outputs["1"].as_numpy("probabilities"), outputs["2"].as_numpy("probabilities")
    )


def test_digits_accuracy_through_the_server(
    client: httpclient.InferenceServerClient, server: Server
) -> None:
    evaluation = np.load(server.repository / "digits/evaluation.npz")
    inputs, labels = evaluation["inputs"], evaluation["labels"]
    predicted = []
    for start in range(0, len(inputs), 64):
        batch = inputs[start : start + 64]
        result = client.infer("digits", [tensor("input", batch, "FP32", True)])
        predicted.append(result.as_numpy("label"))
    accuracy = float(np.mean(np.concatenate(predicted) == labels))
    assert len(labels) >= 400
    assert accuracy >= 0.9, accuracy


def test_broken_models_are_unavailable_while_others_serve(
    client: httpclient.InferenceServerClient,
) -> None:
    a = sample("FP32", (1, 16))
    inputs = [tensor("INPUT0", a, "FP32", True), tensor("INPUT1", a, "FP32", True)]
    for broken in ("corrupt", "mismatch", "missing_file", "bad_config"):
        with pytest.raises(InferenceServerException) as caught:
            client.infer(broken, inputs)
        assert caught.value.status() == "503"
        assert f"model '{broken}' is not ready" in caught.value.message()
    result = client.infer("add_sub", inputs)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a * 2, rtol=1e-6)
