"""The v2 REST codec: JSON and binary tensors in, JSON and binary tensors out."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from serving.errors import InvalidInputError
from serving.protocol import raw, rest
from serving.types import InferenceResponse, Tensor


def decode(body: bytes, header_length: int | None = None):  # type: ignore[no-untyped-def]
    return rest.decode_request(body, header_length, model_name="m", model_version=None)


def test_json_nested_and_flat_data_decode_to_the_shape() -> None:
    body = orjson.dumps({
        "id": "r1",
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]},
            {"name": "b", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]},
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["héllo"]},
        ],
        "outputs": [{"name": "o", "parameters": {"binary_data": False}}],
    })  # fmt: skip
    request = decode(body)
    assert request.id == "r1"
    a, b, s = request.inputs
    np.testing.assert_array_equal(a.data, np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert b.data.dtype == np.float64 and b.shape == (2, 2)
    assert s.data[0] == "héllo".encode()
    assert request.outputs is not None and request.outputs[0].parameters == {"binary_data": False}


def test_binary_inputs_are_views_on_the_body() -> None:
    payload = np.arange(6, dtype=np.float32)
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 24}}]})  # fmt: skip
    body = header + payload.tobytes()
    request = decode(body, len(header))
    data = request.inputs[0].data
    np.testing.assert_array_equal(data, payload.reshape(2, 3))
    assert not data.flags.owndata


def test_bytes_binary_round_trip() -> None:
    values = np.array([b"", b"a", "é".encode(), b"\x00\xff"], dtype=object).reshape(2, 2)
    encoded = raw.encode(values, "BYTES")
    assert encoded[:4] == struct.pack("<I", 0)
    decoded = raw.decode("x", "BYTES", (2, 2), encoded)
    assert decoded.tolist() == values.tolist()


def test_bytes_count_must_match_shape() -> None:
    encoded = raw.encode(np.array([b"a"], dtype=object), "BYTES")
    with pytest.raises(InvalidInputError, match="1 BYTES elements for shape \\[2\\], expected 2"):
        raw.decode("x", "BYTES", (2,), encoded)


def test_json_bytes_must_be_strings() -> None:
    body = orjson.dumps({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "data": [1]}]})
    with pytest.raises(
        InvalidInputError, match="element 0 is an integer \\(1\\), BYTES takes a JSON string"
    ):
        decode(body)


def test_ragged_json_is_refused() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}
    )
    with pytest.raises(InvalidInputError, match="input 'x'"):
        decode(body)


def test_integer_overflow_is_refused() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}]}
    )
    with pytest.raises(
        InvalidInputError, match=r"element 0 \(300\) is out of range for UINT8 \[0, 255\]"
    ):
        decode(body)


def test_negative_shape_is_refused() -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]})
    with pytest.raises(InvalidInputError, match=r"inputs\.0\.shape\.0"):
        decode(body)


def _response() -> InferenceResponse:
    return InferenceResponse(
        model_name="m",
        model_version="3",
        id="abc",
        outputs=[
            Tensor("f", "FP16", np.array([[1.5, 2.0]], dtype=np.float16)),
            Tensor("s", "BYTES", np.array(["x", "yz"], dtype=object)),
        ],
    )


def test_encode_json_only() -> None:
    request = decode(orjson.dumps({"inputs": []}))
    body, header_length = rest.encode_response(_response(), request)
    assert header_length is None
    document = orjson.loads(body)
    assert document["id"] == "abc" and document["model_version"] == "3"
    assert document["outputs"][0] == {"name": "f", "datatype": "FP16", "shape": [1, 2],
                                      "data": [1.5, 2.0]}  # fmt: skip
    assert document["outputs"][1]["data"] == ["x", "yz"]


def test_encode_binary_per_output_and_by_default() -> None:
    request = decode(orjson.dumps({
        "inputs": [],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "f"}, {"name": "s", "parameters": {"binary_data": False}}],
    }))  # fmt: skip
    body, header_length = rest.encode_response(_response(), request)
    assert header_length is not None
    document = orjson.loads(body[:header_length])
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 4}
    assert "data" not in document["outputs"][0]
    assert document["outputs"][1]["data"] == ["x", "yz"]
    np.testing.assert_array_equal(
        np.frombuffer(body[header_length:], dtype=np.float16), np.array([1.5, 2.0], np.float16)
    )
