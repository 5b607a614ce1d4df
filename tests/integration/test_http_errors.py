"""Malformed and invalid requests sent raw with httpx: status codes and messages."""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections.abc import Iterator

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import MAX_REQUEST_BYTES, Server


@pytest.fixture
def http(server: Server) -> httpx.Client:
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as client:
        yield client


def add_sub(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [2.0] * 16},
        ]
    }
    body.update(overrides)
    return body


def binary_request(header: dict[str, object], payload: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = orjson.dumps(header)
    return encoded + payload, {"Inference-Header-Content-Length": str(len(encoded))}


def one_input(**fields: object) -> dict[str, object]:
    item: dict[str, object] = {"name": "INPUT", "shape": [1, 2], "datatype": "FP32"}
    item.update(fields)
    return {"inputs": [item]}


CASES = {
    "bad-json": (400, "/v2/models/add_sub/infer", b"{not json", {}, "not valid JSON"),
    "no-inputs-field": (400, "/v2/models/add_sub/infer", b"{}", {}, "inputs: Field required"),
    "shape-not-a-list": (
        400, "/v2/models/add_sub/infer",
        orjson.dumps({"inputs": [{"name": "INPUT0", "shape": 3, "datatype": "FP32", "data": []}]}),
        {}, "inputs.0.shape",
    ),
    "unknown-input": (
        400, "/v2/models/add_sub/infer",
        orjson.dumps(add_sub(inputs=[
            *add_sub()["inputs"],  # type: ignore[misc]
            {"name": "EXTRA", "shape": [1], "datatype": "FP32", "data": [1]},
        ])),
        {}, "unknown input 'EXTRA' for model 'add_sub'",
    ),
    "missing-input": (
        400, "/v2/models/add_sub/infer",
        orjson.dumps(add_sub(inputs=add_sub()["inputs"][:1])),  # type: ignore[index]
        {}, "missing input(s) for model 'add_sub': INPUT1",
    ),
    "wrong-datatype": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(datatype="INT32", data=[1, 2])),
        {}, "input 'INPUT' has datatype INT32, model 'identity_fp32' expects FP32",
    ),
    "unsupported-datatype": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(datatype="COMPLEX64", data=[1, 2])),
        {}, "unsupported datatype 'COMPLEX64'",
    ),
    "wrong-shape": (
        400, "/v2/models/add_sub/infer",
        orjson.dumps(add_sub(inputs=[
            {"name": "INPUT0", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [2.0] * 16},
        ])),
        {}, "input 'INPUT0' has shape [1, 8], model expects [-1, 16]",
    ),
    "data-count-mismatch": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(data=[1, 2, 3])),
        {}, "3 data elements for shape [1, 2], expected 2",
    ),
    "data-not-numbers": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(data=["a", "b"])),
        {}, "input 'INPUT': element 0 is a string (\"a\"), FP32 takes a JSON number",
    ),
    "null-is-not-nan": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(data=[1.0, None])),
        {}, "element 1 is null (null), FP32 takes a JSON number",
    ),
    "string-false-is-not-a-bool": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(datatype="BOOL", data=[True, "false"])),
        {}, "element 1 is a string (\"false\"), BOOL takes a JSON boolean",
    ),
    "fraction-is-not-an-int": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(datatype="INT32", data=[1, 1.7])),
        {}, "element 1 is a number (1.7), INT32 takes a JSON integer",
    ),
    "fp16-overflow": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(datatype="FP16", data=[1, 70000])),
        {}, "element 1 (70000) is out of range for FP16",
    ),
    "object-parameter": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps({**one_input(data=[1, 2]), "parameters": {"priority": {"x": 1}}}),
        {}, "parameter 'priority' must be a string, number or boolean, not an object",
    ),
    "too-many-dims": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(shape=[1] * 65, data=[1])),
        {}, "has 65 dims, the most a tensor can have is 64",
    ),
    "shape-product-overflows": (
        413, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(shape=[2**62, 2**62, 4], data=[1])),
        {}, "declares more than 67108864 elements",
    ),
    "5000-digit-version": (
        400, "/v2/models/add_sub/versions/" + "9" * 5000 + "/infer", orjson.dumps(add_sub()),
        {}, "model version must be a positive integer",
    ),
    "no-data": (
        400, "/v2/models/identity_fp32/infer", orjson.dumps(one_input()),
        {}, "has neither data nor binary_data_size",
    ),
    "batch-above-max": (
        400, "/v2/models/identity_fp32/infer",
        orjson.dumps(one_input(shape=[9, 1], data=[0] * 9)),
        {}, "batch size 9, above the model's max_batch_size 8",
    ),
    "unknown-output": (
        400, "/v2/models/add_sub/infer",
        orjson.dumps(add_sub(outputs=[{"name": "NOPE"}])),
        {}, "unknown output 'NOPE' for model 'add_sub'",
    ),
    "bad-header-length": (
        400, "/v2/models/add_sub/infer", orjson.dumps(add_sub()),
        {"Inference-Header-Content-Length": "many"}, "must be an integer",
    ),
    "header-length-beyond-body": (
        400, "/v2/models/add_sub/infer", orjson.dumps(add_sub()),
        {"Inference-Header-Content-Length": "100000"}, "outside the body",
    ),
    "bad-version-string": (
        400, "/v2/models/add_sub/versions/latest/infer", orjson.dumps(add_sub()),
        {}, "model version must be a positive integer",
    ),
    "unknown-model": (
        404, "/v2/models/no_such_model/infer", orjson.dumps(add_sub()),
        {}, "unknown model 'no_such_model'",
    ),
    "unknown-version": (
        404, "/v2/models/digits/versions/7/infer", orjson.dumps(add_sub()),
        {}, "unknown version '7' of model 'digits' (available versions: 1, 2)",
    ),
    "unavailable-model": (
        503, "/v2/models/corrupt/infer", orjson.dumps(add_sub()),
        {}, "model 'corrupt' is not ready: ",
    ),
    "unsupported-encoding": (
        400, "/v2/models/add_sub/infer", orjson.dumps(add_sub()),
        {"Content-Encoding": "br"}, "unsupported Content-Encoding 'br'",
    ),
    "corrupt-gzip": (
        400, "/v2/models/add_sub/infer", b"\x1f\x8b not gzip at all",
        {"Content-Encoding": "gzip"}, "request body is not valid gzip",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_requests_get_clear_errors(http: httpx.Client, case: str) -> None:
    status, path, body, headers, message = CASES[case]
    response = http.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


def test_binary_size_mismatch(http: httpx.Client) -> None:
    header = one_input(parameters={"binary_data_size": 4})
    body, headers = binary_request(header, b"\x00" * 4)
    response = http.post("/v2/models/identity_fp32/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert "4 bytes of data for shape [1, 2] FP32, expected 8" in response.json()["error"]


def test_binary_size_beyond_the_body(http: httpx.Client) -> None:
    body, headers = binary_request(one_input(parameters={"binary_data_size": 8}), b"\x00" * 3)
    response = http.post("/v2/models/identity_fp32/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert "exceeds the 3 bytes of binary data left" in response.json()["error"]


def test_unclaimed_binary_data(http: httpx.Client) -> None:
    body, headers = binary_request(one_input(parameters={"binary_data_size": 8}), b"\x00" * 12)
    response = http.post("/v2/models/identity_fp32/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert "4 bytes of binary data that no input claims" in response.json()["error"]


def test_non_utf8_bytes_to_a_string_model(http: httpx.Client) -> None:
    header = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": 6}}]}  # fmt: skip
    body, headers = binary_request(header, struct.pack("<I", 2) + b"\xff\xfe")
    response = http.post("/v2/models/identity_bytes/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert "element 0 is not valid UTF-8" in response.json()["error"]


def test_truncated_bytes_element(http: httpx.Client) -> None:
    header = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": 6}}]}  # fmt: skip
    body, headers = binary_request(header, struct.pack("<I", 9) + b"ab")
    response = http.post("/v2/models/identity_bytes/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert "declares 9 bytes, only 2 remain" in response.json()["error"]


def test_a_gzip_bomb_stops_at_the_limit(http: httpx.Client) -> None:
    """1 GiB of zeros in about 1 MiB of gzip: inflated only up to the limit, then refused."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(deflater.compress(zeros) for _ in range(1024)) + deflater.flush()
    assert len(bomb) < 2 << 20
    response = http.post(
        "/v2/models/add_sub/infer", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    assert f"inflates to more exceeds the limit of {MAX_REQUEST_BYTES}" in response.text


def test_admin_bodies_are_bounded(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as the body arrives
        yield b'{"ready": true, "pad": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}'

    response = http.post("/v2/repository/index", content=chunks())
    assert response.status_code == 413
    assert "exceeds the limit of 1048576 bytes" in response.json()["error"]


def answered(server: Server, code: str) -> int:
    text = httpx.get(f"http://{server.metrics_url}/metrics", timeout=10).text
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "serving_requests_total"
        and sample.labels["model"] == "add_sub" and sample.labels["code"] == code
    )  # fmt: skip


def test_a_client_that_leaves_before_its_body_is_counted_not_a_fault(
    server: Server, http: httpx.Client
) -> None:
    """The request is recorded as 499 (client closed), never as a 500 with a traceback."""
    closed, faults = answered(server, "499"), answered(server, "500")
    host, port = server.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"inputs": ['
        )
        time.sleep(0.2)  # the server is waiting for the rest of the body when the client goes
    deadline = time.monotonic() + 20
    while answered(server, "499") == closed and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answered(server, "499") == closed + 1
    assert answered(server, "500") == faults
    assert http.get("/v2/health/ready").status_code == 200


def test_oversized_request_is_refused(http: httpx.Client) -> None:
    response = http.post("/v2/models/add_sub/infer", content=b"0" * (MAX_REQUEST_BYTES + 1))
    assert response.status_code == 413
    assert f"exceeds the limit of {MAX_REQUEST_BYTES} bytes" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v2/models/no_such_model", 404, "unknown model 'no_such_model'"),
        ("GET", "/v2/models/digits/versions/9", 404, "unknown version '9' of model 'digits'"),
        ("GET", "/v2/models/corrupt", 503, "model 'corrupt' is not ready"),
        ("GET", "/v2/models/no_such_model/config", 404, "unknown model"),
        ("GET", "/v2/models/no_such_model/stats", 404, "unknown model"),
        ("GET", "/v2/models/no_such_model/ready", 404, "unknown model"),
        ("GET", "/v2/no/such/route", 404, "Not Found"),
        ("GET", "/v2/models/add_sub/infer", 405, "Method Not Allowed"),
    ],
)
def test_endpoint_errors(
    http: httpx.Client, method: str, path: str, status: int, message: str
) -> None:
    response = http.request(method, path)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_not_ready_model_answers_503_on_ready(http: httpx.Client) -> None:
    assert http.get("/v2/models/corrupt/ready").status_code == 503
    assert http.get("/v2/models/digits/ready").status_code == 200


def test_server_survives_bad_input(http: httpx.Client) -> None:
    for body in (b"{", b"[]", b'{"inputs": 5}', b"\x00" * 100):
        assert http.post("/v2/models/add_sub/infer", content=body).status_code == 400
    response = http.post("/v2/models/add_sub/infer", content=orjson.dumps(add_sub()))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == [3.0] * 16
