"""Every error code through both transports: one (HTTP status, gRPC code) pair, one message."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from serving.errors import ErrorCode
from serving.status import STATUS
from tests.integration.clients import In, V2Client, error_code, outside_address
from tests.integration.conftest import MAX_REQUEST_BYTES, Server

ROW = np.ones((1, 16), dtype=np.float32)
ADD_SUB = [In("INPUT0", ROW, "FP32"), In("INPUT1", ROW, "FP32")]


def trigger(client: V2Client, code: ErrorCode) -> None:
    if code is ErrorCode.INVALID_ARGUMENT:
        client.infer("add_sub", [In("INPUT0", ROW, "FP32")])
    elif code is ErrorCode.NOT_FOUND:
        client.infer("digits", [In("input", ROW, "FP32")], version="7")
    elif code is ErrorCode.UNAVAILABLE:
        client.infer("corrupt", ADD_SUB)
    elif code is ErrorCode.RESOURCE_EXHAUSTED:
        big = np.zeros((1, MAX_REQUEST_BYTES // 4 + 16), dtype=np.float32)
        client.infer("identity_fp32", [In("INPUT", big, "FP32")])
    elif code is ErrorCode.DEADLINE_EXCEEDED:
        client.infer("add_sub", ADD_SUB, timeout_us=1)
    elif code is ErrorCode.PERMISSION_DENIED:
        # Model control from an address that is not loopback (the server listens on all).
        address = outside_address()
        if address is None:
            pytest.skip("this machine has no address but loopback")
        http_port = client.http_url.rsplit(":", 1)[1]
        grpc_port = client.grpc_url.rsplit(":", 1)[1]
        outside = V2Client(client.protocol, f"{address}:{http_port}", f"{address}:{grpc_port}")
        outside.load_model("add_sub")
    elif code is ErrorCode.INTERNAL:
        client.infer("runtime_fault", [In("indices", np.array([[99]], dtype=np.int64), "INT64")])


def caught(client: V2Client, code: ErrorCode) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        trigger(client, code)
    return info.value


INFERENCE_CODES = [c for c in ErrorCode if c not in (ErrorCode.CONFLICT, ErrorCode.UNAUTHENTICATED)]
"""CONFLICT comes only from the traffic and rollout admin endpoints, which are HTTP only (the
v2 gRPC service has no such calls): tests/integration/test_rollout.py covers it.
UNAUTHENTICATED only from a server with credentials: tests/integration/test_auth.py."""


@pytest.mark.parametrize("code", INFERENCE_CODES, ids=[c.name for c in INFERENCE_CODES])
def test_each_code_maps_to_one_pair_on_both_transports(server: Server, code: ErrorCode) -> None:
    http = caught(V2Client("http", server.http_url, server.grpc_url), code)
    grpc = caught(V2Client("grpc", server.http_url, server.grpc_url), code)
    assert http.status() == str(STATUS[code].http)
    assert grpc.status() == str(STATUS[code].grpc)
    assert error_code(http) is error_code(grpc) is code
    if code is ErrorCode.RESOURCE_EXHAUSTED:
        # gRPC refuses the message in its transport, before our code sees it; both name the limit.
        assert str(MAX_REQUEST_BYTES) in http.message()
        assert str(MAX_REQUEST_BYTES) in grpc.message()
    else:
        assert http.message() == grpc.message()


def test_internal_errors_hide_details(server: Server) -> None:
    error = caught(V2Client("http", server.http_url, server.grpc_url), ErrorCode.INTERNAL)
    assert error.message() == "inference failed in model 'runtime_fault' version 1"


def test_replica_serves_on_after_every_error(client: V2Client) -> None:
    for code in INFERENCE_CODES:
        with pytest.raises(InferenceServerException):
            trigger(client, code)
    np.testing.assert_array_equal(client.infer("add_sub", ADD_SUB).outputs["OUTPUT0"], ROW * 2)
