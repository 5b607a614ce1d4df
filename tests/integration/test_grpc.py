"""gRPC specifics: typed contents, raw contents rules, streaming, message size."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.integration.conftest import MAX_REQUEST_BYTES, Server

TYPED = {
    "BOOL": ("bool_contents", [True, False]),
    "INT8": ("int_contents", [-128, 127]),
    "INT16": ("int_contents", [-3, 4]),
    "INT32": ("int_contents", [-5, 6]),
    "INT64": ("int64_contents", [-(2**40), 2**40]),
    "UINT8": ("uint_contents", [0, 255]),
    "UINT16": ("uint_contents", [1, 65535]),
    "UINT32": ("uint_contents", [2, 2**32 - 1]),
    "UINT64": ("uint64_contents", [3, 2**64 - 1]),
    "FP32": ("fp32_contents", [1.5, -2.25]),
    "FP64": ("fp64_contents", [1e300, -1e-300]),
    "BYTES": ("bytes_contents", [b"alpha", "é".encode()]),
}


@pytest.fixture
def stub(server: Server) -> service_pb2_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def typed_request(datatype: str, values: list[object]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
    tensor = request.inputs.add(name="INPUT", datatype=datatype, shape=[1, len(values)])
    getattr(tensor.contents, TYPED[datatype][0]).extend(values)
    return request


@pytest.mark.parametrize("datatype", list(TYPED))
def test_typed_contents_round_trip(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str
) -> None:
    values = TYPED[datatype][1]
    response = stub.ModelInfer(typed_request(datatype, values))
    output = response.outputs[0]
    assert (output.name, output.datatype, list(output.shape)) == ("OUTPUT", datatype, [1, 2])
    raw = response.raw_output_contents[0]
    if datatype == "BYTES":
        assert raw == b"".join(len(v).to_bytes(4, "little") + v for v in values)  # type: ignore[arg-type]
    else:
        expected = np.array(values, dtype=grpcclient.triton_to_np_dtype(datatype))
        np.testing.assert_array_equal(np.frombuffer(raw, dtype=expected.dtype), expected)


def test_typed_contents_count_must_match(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = typed_request("FP32", [1.0, 2.0])
    request.inputs[0].shape[:] = [1, 3]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "2 data elements for shape [1, 3], expected 3" in caught.value.details()


def test_fp16_needs_raw_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity_fp16")
    request.inputs.add(name="INPUT", datatype="FP16", shape=[1, 1])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 data must be sent as raw_input_contents" in caught.value.details()


def test_raw_contents_for_every_input_or_none(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.zeros(16, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "1 raw_input_contents for 2 inputs" in caught.value.details()


def test_message_over_the_limit_is_resource_exhausted(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = np.zeros((1, MAX_REQUEST_BYTES // 4 + 16), dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        client.infer("identity_fp32", [tensor])
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert str(MAX_REQUEST_BYTES) in caught.value.message()


def test_stream_answers_every_request_and_carries_errors(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        data = np.arange(16, dtype=np.float32).reshape(1, 16)
        for index in range(6):
            model = "no_such_model" if index % 3 == 1 else "add_sub"
            inputs = []
            for name in ("INPUT0", "INPUT1"):
                tensor = grpcclient.InferInput(name, [1, 16], "FP32")
                tensor.set_data_from_numpy(data)
                inputs.append(tensor)
            client.async_stream_infer(model, inputs, request_id=str(index))
        answers = [results.get(timeout=30) for _ in range(6)]
    finally:
        client.stop_stream()
    failures = [error for _, error in answers if error is not None]
    successes = [result for result, error in answers if error is None]
    assert len(failures) == 2
    assert all("unknown model 'no_such_model'" in str(f) for f in failures)
    assert sorted(r.get_response().id for r in successes) == ["0", "2", "3", "5"]  # type: ignore[attr-defined]
    for result in successes:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data * 2)  # type: ignore[attr-defined]


def test_typed_and_raw_contents_together_are_invalid(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = typed_request("INT32", [1, 2])
    request.raw_input_contents.append(np.array([1, 2], dtype=np.int32).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "contents and raw_input_contents in one request" in info.value.details()


def test_undecodable_protobuf_is_invalid_argument(server: Server) -> None:
    """Bytes that are no ModelInferRequest: INVALID_ARGUMENT, as Triton answers, and the
    server answers the next call."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff\xff", timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in info.value.details()
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([b"\x0a\xff"]), timeout=10))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    ok = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    assert ok.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready


def test_limits_refuse_before_decoding(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    huge = service_pb2.ModelInferRequest(model_name="identity_fp32")
    huge.inputs.add(name="INPUT", datatype="FP32", shape=[2**40, 2**40])
    huge.raw_input_contents.append(b"\x00" * 8)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(huge, timeout=10)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "declares more than" in info.value.details()
    deep = service_pb2.ModelInferRequest(model_name="identity_fp32")
    deep.inputs.add(name="INPUT", datatype="FP32", shape=[1] * 65)
    deep.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(deep, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "65 dims" in info.value.details()


def test_a_5000_digit_version_is_invalid_argument(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = typed_request("INT32", [1, 2])
    request.model_version = "9" * 5000
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "model version must be a positive integer" in info.value.details()
