"""Fuzzed decoders and round-trip properties (hypothesis): whatever bytes arrive, the JSON,
binary-extension and protobuf decoders answer with a ServingError or a request, never anything
else; and every tensor a response carries decodes back to itself, through JSON, the binary
extension and gRPC's raw contents."""

from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serving.errors import ServingError
from serving.protocol import grpc_codec, raw, rest
from serving.protocol.datatypes import NUMPY_DTYPES
from serving.protocol.limits import InputLimits
from serving.protocol.proto import grpc_service_pb2 as pb
from serving.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from tests.strategies import DATATYPES, near_requests, shapes

EXAMPLES = int(os.environ.get("SERVING_FUZZ_EXAMPLES", "300"))
"""Examples per property; raise it for a longer run (CI runs the default)."""
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
LIMITS = InputLimits(max_tensor_elements=4096, max_request_elements=8192,
                     max_object_elements=4096, max_bytes_element=4096)  # fmt: skip


def only_serving_errors(decode: object, *args: object, **kwargs: object) -> None:
    with contextlib.suppress(ServingError):
        decode(*args, **kwargs)  # type: ignore[operator]


@FUZZ
@given(body=st.binary(max_size=512), header=st.none() | st.integers(-4, 600))
def test_any_bytes_into_the_rest_decoder(body: bytes, header: int | None) -> None:
    only_serving_errors(
        rest.decode_request, body, header, model_name="m", model_version=None, limits=LIMITS
    )


@FUZZ
@given(body=near_requests(), binary=st.booleans())
def test_near_valid_json_into_the_rest_decoder(body: bytes, binary: bool) -> None:
    header = body.rfind(b"}") + 1 if binary else None
    only_serving_errors(
        rest.decode_request, body, header, model_name="m", model_version=None, limits=LIMITS
    )


@FUZZ
@given(
    datatype=st.sampled_from(DATATYPES) | st.text(max_size=6),
    shape=shapes,
    buffer=st.binary(max_size=256),
)
def test_any_bytes_into_the_binary_decoder(datatype: str, shape: list[int], buffer: bytes) -> None:
    only_serving_errors(raw.decode, "x", datatype, tuple(shape), buffer, limits=LIMITS)


@FUZZ
@given(data=st.binary(max_size=512))
def test_any_bytes_into_the_protobuf_decoder(data: bytes) -> None:
    only_serving_errors(grpc_codec.check_wire, data, LIMITS)  # the count before the parse
    try:
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return  # the transport answers INVALID_ARGUMENT (tests/integration/test_grpc.py)
    only_serving_errors(grpc_codec.decode_request, message, LIMITS)


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    use_raw = draw(st.booleans())
    for index in range(draw(st.integers(0, 3))):
        shape = draw(
            st.lists(st.integers(-1, 2**62), max_size=4) | st.lists(st.integers(0, 4), max_size=66)
        )
        tensor = message.inputs.add(name=f"x{index}", datatype=draw(st.sampled_from(DATATYPES)),
                                    shape=shape)  # fmt: skip
        field = draw(st.sampled_from(sorted(set(grpc_codec.CONTENTS_FIELD.values()))))
        values = {
            "bool_contents": st.booleans(),
            "int_contents": st.integers(-(2**31), 2**31 - 1),
            "int64_contents": st.integers(-(2**63), 2**63 - 1),
            "uint_contents": st.integers(0, 2**32 - 1),
            "uint64_contents": st.integers(0, 2**64 - 1),
            "fp32_contents": st.floats(width=32),
            "fp64_contents": st.floats(),
            "bytes_contents": st.binary(max_size=8),
        }[field]
        getattr(tensor.contents, field).extend(draw(st.lists(values, max_size=20)))
        if use_raw:
            message.raw_input_contents.append(draw(st.binary(max_size=64)))
    return message


@FUZZ
@given(message=grpc_requests())
def test_structured_messages_into_the_protobuf_decoder(message: pb.ModelInferRequest) -> None:
    only_serving_errors(grpc_codec.decode_request, message, LIMITS)


# -- round trips ------------------------------------------------------------------------------


@st.composite
def tensors(draw: st.DrawFn, *, text: bool = False) -> Tensor:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4))
    if datatype == "BYTES":
        items = st.text(max_size=6).map(str.encode) if text else st.binary(max_size=6)
        flat = draw(st.lists(items, min_size=math.prod(shape), max_size=math.prod(shape)))
        data = np.empty(len(flat), dtype=object)
        data[:] = flat
        return Tensor("y", datatype, data.reshape(shape))
    dtype = NUMPY_DTYPES[datatype]
    return Tensor("y", datatype, draw(hnp.arrays(dtype, shape)))


def same(decoded: np.ndarray, tensor: Tensor) -> None:
    assert decoded.shape == tensor.data.shape
    if tensor.datatype == "BYTES":
        assert decoded.tolist() == tensor.data.tolist()
    else:
        assert decoded.dtype == tensor.data.dtype
        np.testing.assert_array_equal(decoded, tensor.data)  # NaN matches NaN, -0.0 matches 0.0


def back_as_input(body: bytes, header_length: int | None) -> np.ndarray:
    """A response's output sent back as a request's input: the same JSON fields, renamed."""
    header = body if header_length is None else body[:header_length]
    document = json.loads(header)  # the stdlib reads NaN and Infinity, as Triton's clients do
    request = {"inputs": document["outputs"]}
    encoded = json.dumps(request, allow_nan=True).encode()
    if header_length is None:
        return rest.decode_request(encoded, None, model_name="m", model_version=None).inputs[0].data
    with_binary = encoded + body[header_length:]
    return rest.decode_request(with_binary, len(encoded), model_name="m",
                               model_version=None).inputs[0].data  # fmt: skip


@FUZZ
@given(tensor=tensors(text=True))
def test_any_tensor_round_trips_through_json(tensor: Tensor) -> None:
    response = InferenceResponse("m", "1", [tensor])
    request = InferenceRequest("m", None, [])
    body, header_length = rest.encode_response(response, request)
    assert header_length is None
    same(back_as_input(body, header_length), tensor)


@FUZZ
@given(tensor=tensors())
def test_any_tensor_round_trips_through_the_binary_extension(tensor: Tensor) -> None:
    response = InferenceResponse("m", "1", [tensor])
    request = InferenceRequest("m", None, [], [RequestedOutput("y", {"binary_data": True})])
    body, header_length = rest.encode_response(response, request)
    assert header_length is not None
    same(back_as_input(body, header_length), tensor)


@FUZZ
@given(tensor=tensors())
def test_any_tensor_round_trips_through_grpc_raw_contents(tensor: Tensor) -> None:
    message = grpc_codec.encode_response(InferenceResponse("m", "1", [tensor]))
    request = pb.ModelInferRequest(model_name="m")
    output = message.outputs[0]
    request.inputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
    request.raw_input_contents.extend(message.raw_output_contents)
    wire = pb.ModelInferRequest.FromString(request.SerializeToString())
    same(grpc_codec.decode_request(wire).inputs[0].data, tensor)


def test_the_round_trip_covers_non_finite_floats_and_every_datatype() -> None:
    """The property above, pinned on the cases that used to go wrong."""
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 65504], dtype=np.float16)
    tensor = Tensor("y", "FP16", values)
    body, header_length = rest.encode_response(
        InferenceResponse("m", "1", [tensor]), InferenceRequest("m", None, [])
    )
    assert b"[NaN,Infinity,-Infinity,-0.0,65504.0]" in body
    same(back_as_input(body, header_length), tensor)
