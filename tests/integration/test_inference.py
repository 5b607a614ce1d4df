"""Inference over every protocol: datatypes, JSON/binary mixes, versions, accuracy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.utils import InferenceServerException

from serving.errors import ErrorCode
from serving.protocol.datatypes import DATATYPES, NUMPY_DTYPES
from tests.integration.clients import In, Out, V2Client, error_code
from tests.integration.conftest import Server


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


def reference(path: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, feed)  # type: ignore[no-any-return]


def as_text(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(client: V2Client, datatype: str) -> None:
    data = sample(datatype, (2, 3))
    # tritonclient.grpc always sends raw contents (typed contents: test_grpc.py); HTTP both ways.
    modes = [False, True] if client.protocol == "http" else [True]
    for binary in modes:
        result = client.infer(
            f"identity_{datatype.lower()}",
            [In("INPUT", data, datatype, binary)],
            outputs=[Out("OUTPUT", binary)],
        )
        output = result.outputs["OUTPUT"]
        assert output.shape == data.shape
        if datatype == "BYTES":
            assert as_text(output) == as_text(data)
        else:
            assert output.dtype == data.dtype
            np.testing.assert_array_equal(output, data)
        assert result.output_meta["OUTPUT"]["datatype"] == datatype


def test_json_and_binary_inputs_and_outputs_mix(client: V2Client, server: Server) -> None:
    a = sample("FP32", (4, 16), seed=1)
    b = sample("FP32", (4, 16), seed=2)
    result = client.infer(
        "add_sub",
        [In("INPUT0", a, "FP32", True), In("INPUT1", b, "FP32", False)],
        outputs=[Out("OUTPUT0", False), Out("OUTPUT1", True)],
        request_id="mix-42",
    )
    assert result.id == "mix-42"
    if client.protocol == "http":
        assert "data" in result.output_meta["OUTPUT0"]
        assert result.output_meta["OUTPUT1"]["parameters"]["binary_data_size"] == a.nbytes
    expected = reference(
        str(server.repository / "add_sub/1/model.onnx"), {"INPUT0": a, "INPUT1": b}
    )
    np.testing.assert_allclose(result.outputs["OUTPUT0"], expected[0], rtol=1e-6)
    np.testing.assert_array_equal(result.outputs["OUTPUT1"], expected[1])


def test_requested_outputs_limit_the_response(client: V2Client) -> None:
    a = sample("FP32", (1, 16))
    result = client.infer(
        "add_sub", [In("INPUT0", a, "FP32"), In("INPUT1", a, "FP32")], outputs=[Out("OUTPUT1")]
    )
    assert list(result.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(result.outputs["OUTPUT1"], np.zeros_like(a))


def test_gzip_compressed_request(client: V2Client) -> None:
    a = sample("FP32", (2, 16), seed=3)
    result = client.infer(
        "add_sub", [In("INPUT0", a, "FP32"), In("INPUT1", a, "FP32", False)], compression="gzip"
    )
    np.testing.assert_allclose(result.outputs["OUTPUT0"], a * 2, rtol=1e-6)


@pytest.mark.parametrize("version", ["1", "2"])
def test_explicit_version_matches_in_process_onnxruntime(
    client: V2Client, server: Server, version: str
) -> None:
    x = np.load(server.repository / "digits/evaluation.npz")["inputs"][:32]
    result = client.infer("digits", [In("input", x, "FP32")], version=version)
    assert result.model_version == version
    expected = reference(str(server.repository / f"digits/{version}/model.onnx"), {"input": x})
    np.testing.assert_allclose(result.outputs["probabilities"], expected[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.outputs["label"], expected[1])


def test_versions_differ_and_default_is_highest(client: V2Client, server: Server) -> None:
    x = np.load(server.repository / "digits/evaluation.npz")["inputs"][:64]
    results = {
        v: client.infer("digits", [In("input", x, "FP32")], version=v) for v in ("1", "2", "")
    }
    assert results[""].model_version == "2"
    np.testing.assert_array_equal(
        results[""].outputs["probabilities"], results["2"].outputs["probabilities"]
    )
    assert not np.allclose(
        results["1"].outputs["probabilities"], results["2"].outputs["probabilities"]
    )


def test_digits_accuracy_through_the_server(client: V2Client, server: Server) -> None:
    evaluation = np.load(server.repository / "digits/evaluation.npz")
    inputs, labels = evaluation["inputs"], evaluation["labels"]
    predicted = [
        client.infer("digits", [In("input", inputs[i : i + 64], "FP32")]).outputs["label"]
        for i in range(0, len(inputs), 64)
    ]
    accuracy = float(np.mean(np.concatenate(predicted) == labels))
    assert len(labels) >= 400
    assert accuracy >= 0.9, accuracy


def test_broken_models_are_unavailable_while_others_serve(client: V2Client) -> None:
    a = sample("FP32", (1, 16))
    inputs = [In("INPUT0", a, "FP32"), In("INPUT1", a, "FP32")]
    for broken in ("corrupt", "mismatch", "missing_file", "bad_config"):
        with pytest.raises(InferenceServerException) as caught:
            client.infer(broken, inputs)
        assert error_code(caught.value) is ErrorCode.UNAVAILABLE
        assert f"model '{broken}' is not ready" in caught.value.message()
    result = client.infer("add_sub", inputs)
    np.testing.assert_allclose(result.outputs["OUTPUT0"], a * 2, rtol=1e-6)
