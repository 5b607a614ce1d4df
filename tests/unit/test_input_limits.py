"""Bounded and exact decoding: each limit refuses before it allocates, JSON values are taken as
the datatype says or refused, never coerced."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from serving.errors import InvalidInputError, LimitExceededError
from serving.protocol import grpc_codec, raw, rest
from serving.protocol.limits import InputLimits
from serving.protocol.proto import grpc_service_pb2 as pb
from serving.types import InferenceResponse, Tensor

SMALL = InputLimits(
    max_tensor_elements=100, max_request_elements=150, max_object_elements=120, max_bytes_element=8
)


def decode(document: object, limits: InputLimits = SMALL):  # type: ignore[no-untyped-def]
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return rest.decode_request(body, None, model_name="m", model_version=None, limits=limits)


def one(datatype: str, data: object, shape: list[int] | None = None) -> dict[str, object]:
    size = len(data) if isinstance(data, list) else 1
    item = {"name": "x", "datatype": datatype, "shape": shape or [size], "data": data}
    return {"inputs": [item]}


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        (
            "BOOL",
            [True, "false"],
            r"element 1 is a string \(\"false\"\), BOOL takes a JSON boolean",
        ),
        ("BOOL", [1], r"element 0 is an integer \(1\), BOOL takes a JSON boolean"),
        ("INT32", [1, 1.7], r"element 1 is a number \(1.7\), INT32 takes a JSON integer"),
        ("INT32", [True], r"element 0 is a boolean \(true\), INT32 takes a JSON integer"),
        ("INT8", [127, 128], r"element 1 \(128\) is out of range for INT8 \[-128, 127\]"),
        ("UINT64", [-1], r"element 0 \(-1\) is out of range for UINT64"),
        ("INT64", [2**70], r"element 0 \(an integer of 71 bits\) is out of range for INT64"),
        ("FP16", [1.0, 70000], r"element 1 \(70000\) is out of range for FP16 \(largest finite"),
        ("FP32", [1e39], r"element 0 \(1e\+39\) is out of range for FP32"),
        ("FP32", [1.0, None], r"element 1 is null \(null\), FP32 takes a JSON number"),
        ("FP64", [{"a": 1}], r"element 0 is an object"),
        ("BYTES", ["a", 2], r"element 1 is an integer \(2\), BYTES takes a JSON string"),
    ],
)
def test_wrong_typed_json_values_are_refused_naming_the_element(
    datatype: str, data: list[object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=r"input 'x': " + message):
        decode(one(datatype, data))


def test_json_values_of_the_right_type_decode_exactly() -> None:
    request = decode({
        "inputs": [
            {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            {"name": "i", "datatype": "INT8", "shape": [2], "data": [-128, 127]},
            {"name": "u", "datatype": "UINT64", "shape": [1], "data": [2**64 - 1]},
            {"name": "h", "datatype": "FP16", "shape": [2], "data": [65504, 0.5]},
            {"name": "f", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]]},
        ]
    })  # fmt: skip
    b, i, u, h, f = (t.data for t in request.inputs)
    assert b.dtype == np.bool_ and b.tolist() == [True, False]
    assert i.dtype == np.int8 and i.tolist() == [-128, 127]
    assert u.dtype == np.uint64 and int(u[0]) == 2**64 - 1
    assert h.dtype == np.float16 and h.tolist() == [65504.0, 0.5]
    assert f.shape == (2, 2) and f.tolist() == [[1.0, 2.5], [3.0, 4.0]]


def test_nan_and_infinities_are_read_as_triton_writes_them() -> None:
    body = b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [3], ' \
           b'"data": [NaN, Infinity, -Infinity]}]}'  # fmt: skip
    data = decode(body).inputs[0].data
    assert math.isnan(data[0]) and data[1] == np.inf and data[2] == -np.inf


def test_nan_and_infinity_outputs_are_written_as_literals_and_read_back() -> None:
    values = np.array([[np.nan, np.inf], [-np.inf, 1.5]], dtype=np.float32)
    response = InferenceResponse("m", "1", [Tensor("y", "FP32", values)])
    body, header_length = rest.encode_response(response, decode({"inputs": []}))
    assert header_length is None
    assert b'"data":[NaN,Infinity,-Infinity,1.5]' in body
    echoed = body.replace(b'"outputs":[{"name":"y"', b'"inputs":[{"name":"y"')
    again = decode(echoed).inputs[0].data
    np.testing.assert_array_equal(again, values)  # NaN equals NaN here


def test_bytes_output_that_is_not_utf8_is_refused_in_json_and_sent_in_binary() -> None:
    response = InferenceResponse("m", "1", [Tensor("s", "BYTES", np.array([b"ok", b"\xff\xfe"]))])
    with pytest.raises(InvalidInputError, match=r"output 's': element 1 is not UTF-8 text"):
        rest.encode_response(response, decode({"inputs": []}))
    binary = decode({"inputs": [], "outputs": [{"name": "s", "parameters": {"binary_data": True}}]})
    body, header_length = rest.encode_response(response, binary)
    assert header_length is not None and body.endswith(b"\xff\xfe")


@pytest.mark.parametrize(
    "where",
    [
        lambda p: {"inputs": [], "parameters": p},
        lambda p: {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],
                               "parameters": p}]},
        lambda p: {"inputs": [], "outputs": [{"name": "y", "parameters": p}]},
    ],
    ids=["request", "input", "output"],
)  # fmt: skip
@pytest.mark.parametrize("value", [{"nested": 1}, [1, 2], None], ids=["object", "list", "null"])
def test_parameters_must_be_scalars(where, value) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=r"parameter 'k' must be a string, number or bool"):
        decode(where({"k": value}))


def test_irregular_and_too_deep_nesting_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="nested irregularly"):
        decode(one("BYTES", [["a", "b"], "cd"], shape=[2, 2]))
    with pytest.raises(InvalidInputError, match="nests 3 lists deep, deeper than its 2-dim shape"):
        decode(one("FP32", [[[1.0]]], shape=[1, 1]))
    deep = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
    with pytest.raises(InvalidInputError, match=r"not valid JSON: .*recursion limit"):
        decode(deep + b"[" * 10_000 + b"]" * 10_000 + b"}]}", InputLimits())


def test_dims_and_declared_elements_are_bounded_before_decoding() -> None:
    with pytest.raises(InvalidInputError, match="has 65 dims, the most a tensor can have is 64"):
        decode(one("FP32", [], shape=[1] * 65))
    # The product would overflow 64 bits: refused once it passes the limit, dim by dim.
    with pytest.raises(LimitExceededError, match=r"declares more than 100 elements.*max_tensor"):
        decode(one("FP32", [1.0], shape=[2**40, 2**40, 2**40]))
    with pytest.raises(LimitExceededError, match=r"request declares 160 elements.*max_request"):
        binary = {"binary_data_size": 80}
        decode({"inputs": [{"name": f"x{i}", "datatype": "UINT8", "shape": [80],
                            "parameters": binary} for i in range(2)]})  # fmt: skip


def test_json_values_are_counted_before_the_body_is_parsed() -> None:
    crowded = one("FP32", [0] * 200)
    with pytest.raises(LimitExceededError, match=r"holds 2.. JSON values and separators"):
        decode(crowded)
    # The count is of separators, at memory speed: commas inside strings count too, and the
    # message points such a body to the binary extension.
    commas = one("BYTES", [","] * 100)
    with pytest.raises(LimitExceededError, match=r"holds 2.. JSON.*the HTTP binary extension"):
        decode(commas)
    assert decode(one("BYTES", ["a"] * 100)).inputs[0].data.shape == (100,)


def test_bytes_elements_are_bounded_in_size_and_count() -> None:
    with pytest.raises(LimitExceededError, match=r"a BYTES element of 9 bytes.*max_bytes_element"):
        decode(one("BYTES", ["123456789"]))
    long = struct.pack("<I", 9) + b"123456789"
    with pytest.raises(LimitExceededError, match="BYTES element of 9 bytes"):
        raw.decode("x", "BYTES", (1,), long, limits=SMALL)
    many = struct.pack("<I", 0) * 5
    with pytest.raises(InvalidInputError, match="more BYTES elements than the 2 of shape"):
        raw.decode("x", "BYTES", (2,), many, limits=SMALL)


def grpc_request(*inputs: pb.ModelInferRequest.InferInputTensor) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.extend(inputs)
    return message


def test_grpc_typed_and_raw_contents_together_are_refused() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[1])
    tensor.contents.int_contents.append(1)
    message = grpc_request(tensor)
    message.raw_input_contents.append(struct.pack("<i", 1))
    with pytest.raises(InvalidInputError, match="contents and raw_input_contents in one request"):
        grpc_codec.decode_request(message)


def test_grpc_typed_contents_are_exact_and_bounded() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT8", shape=[2])
    tensor.contents.int_contents.extend([1, 300])
    with pytest.raises(InvalidInputError, match=r"element 1 \(300\) is out of range for INT8"):
        grpc_codec.decode_request(grpc_request(tensor))
    huge = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2**62, 4])
    with pytest.raises(LimitExceededError, match="declares more than 100 elements"):
        grpc_codec.decode_request(grpc_request(huge), SMALL)
    strings = [
        pb.ModelInferRequest.InferInputTensor(name=f"s{i}", datatype="BYTES", shape=[61])
        for i in range(2)
    ]
    for tensor in strings:
        tensor.contents.bytes_contents.extend([b""] * 61)
    with pytest.raises(LimitExceededError, match="holds 122 JSON values, BYTES and typed elements"):
        grpc_codec.decode_request(grpc_request(*strings), SMALL)
    fine = pb.ModelInferRequest.InferInputTensor(name="x", datatype="UINT16", shape=[1, 2])
    fine.contents.uint_contents.extend([0, 65535])
    data = grpc_codec.decode_request(grpc_request(fine)).inputs[0].data
    assert data.dtype == np.uint16 and data.tolist() == [[0, 65535]]


def test_grpc_typed_contents_are_counted_on_the_wire_before_protobuf_parses_them() -> None:
    def wire(**contents: list[object]) -> bytes:
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1])
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
        message = grpc_request(tensor)
        message.raw_input_contents.append(b"\x42" * 4096)  # raw bytes are skipped, not read
        return message.SerializeToString()

    at_limit = wire(fp32_contents=[1.5] * 60, int_contents=[300, -1] * 20, fp64_contents=[0.0] * 20)
    grpc_codec.check_wire(at_limit, SMALL)  # 120: exactly the limit
    over = wire(fp32_contents=[1.5] * 61, int_contents=[300, -1] * 20, fp64_contents=[0.0] * 20)
    with pytest.raises(LimitExceededError, match="holds 121 typed contents elements"):
        grpc_codec.check_wire(over, SMALL)
    with pytest.raises(LimitExceededError, match="holds 121 typed contents elements"):
        grpc_codec.check_wire(wire(bytes_contents=[b""] * 121), SMALL)
    grpc_codec.check_wire(b"\xff\xff\xff", SMALL)  # not protobuf: left to the parser
