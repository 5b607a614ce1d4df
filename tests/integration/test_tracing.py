"""W3C trace context through the real server: the caller's trace id comes back with this
server's span, over HTTP (a response header) and gRPC (trailing metadata)."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from serving.protocol.proto import grpc_service_pb2 as pb
from serving.protocol.proto import grpc_service_pb2_grpc as pb_grpc
from tests.integration.conftest import Server

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
BODY = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [2.0] * 16},
    ]
}


def test_http_answers_in_the_callers_trace(server: Server) -> None:
    url = f"http://{server.http_url}/v2/models/add_sub/infer"
    response = httpx.post(url, json=BODY, headers={"traceparent": PARENT})
    assert response.status_code == 200
    version, trace, span, flags = response.headers["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert len(span) == 16 and span != "00f067aa0ba902b7"
    untraced = httpx.post(url, json=BODY)
    assert "traceparent" not in untraced.headers  # nothing asked, nothing added


def test_grpc_answers_in_the_callers_trace(server: Server) -> None:
    request = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend(np.ones(16, np.float32).tolist())
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        _, call = stub.ModelInfer.with_call(request, metadata=(("traceparent", PARENT),))
        trailing = dict(call.trailing_metadata())
    version, trace, span, flags = trailing["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01") and span != "00f067aa0ba902b7"
    # tritonclient passes headers as metadata: the same request through it still answers
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        inputs.append(tensor)
    result = client.infer("add_sub", inputs, headers={"traceparent": PARENT})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2, np.float32))
