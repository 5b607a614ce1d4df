"""Oversized and malicious requests at the default limits, sent while another client keeps
calling: each gets a 4xx naming the problem, the replica's peak memory stays bounded (read off
its /proc status), and the other client is served throughout."""

from __future__ import annotations

import contextlib
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from ray import serve
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.config import ServerConfig
from tests.integration.conftest import Server, running_server

DEFAULTS = ServerConfig.model_fields
BODY_LIMIT = DEFAULTS["max_request_bytes"].default
PEAK_BOUND = 2 * BODY_LIMIT
"""What each hostile request below may add to the replica's peak memory: two bodies' worth.
Before the limits, one 305 KB gzip body inflated to 660 MiB, and a JSON body at the limit
decoded to more than a GiB."""


@pytest.fixture(scope="module")
def hostile(ray_serve: None, test_repository: Path) -> Iterator[Server]:
    with running_server(
        "hostile", test_repository,
        max_request_bytes=BODY_LIMIT,
        grpc_max_message_bytes=DEFAULTS["grpc_max_message_bytes"].default,
    ) as started:  # fmt: skip
        yield started


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


class Bystander(threading.Thread):
    """Another client, calling the server back to back with tritonclient."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answered = 0
        self.failed: list[str] = []
        self.slowest_s = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=60)
        data = np.ones((1, 16), dtype=np.float32)
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for item in inputs:
            item.set_data_from_numpy(data)
        while not self._halt.is_set():
            began = time.perf_counter()
            try:
                result = client.infer("add_sub", inputs)
                assert np.array_equal(result.as_numpy("OUTPUT0"), data * 2)
                self.answered += 1
            except Exception as error:
                self.failed.append(repr(error))
            self.slowest_s = max(self.slowest_s, time.perf_counter() - began)
            time.sleep(0.01)
        client.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)


def gzip_bomb(inflated: int) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join(deflater.compress(chunk) for _ in range(inflated >> 20)) + deflater.flush()


def json_body(datatype: str, shape: list[int], data: bytes) -> bytes:
    head = orjson.dumps({"name": "INPUT", "shape": shape, "datatype": datatype})
    return b'{"inputs": [' + head[:-1] + b', "data": ' + data + b"}]}"


def binary_body(datatype: str, shape: list[int], payload: bytes) -> tuple[bytes, dict[str, str]]:
    sized = {"binary_data_size": len(payload)}
    header = orjson.dumps(
        {"inputs": [{"name": "INPUT", "shape": shape, "datatype": datatype, "parameters": sized}]}
    )
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


class Peak:
    """A process's peak memory over a stretch, from its kernel counters (VmHWM, reset through
    clear_refs at the start)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.grown: dict[str, int] = {}

    @contextlib.contextmanager
    def over(self, what: str) -> Iterator[None]:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        start = memory_kib(self.pid)["VmRSS"]
        yield
        self.grown[what] = (memory_kib(self.pid)["VmHWM"] - start) * 1024


def test_hostile_requests_get_4xx_in_bounded_memory_while_others_are_served(
    hostile: Server,
) -> None:
    pid = int(serve.get_app_handle(hostile.app).endpoints.remote().result(timeout_s=30)["pid"])
    peak = Peak(pid)
    near_limit = BODY_LIMIT - 4096
    zeros = b"[" + b"0," * (near_limit // 2 - 8) + b"0]"
    strings = b"[" + b'"ab",' * (near_limit // 5 - 8) + b'"ab"]'
    many_bytes, many_headers = binary_body("BYTES", [near_limit // 4], bytes(near_limit // 4 * 4))
    long_bytes, long_headers = binary_body("BYTES", [1], struct.pack("<I", near_limit) + bytes(16))
    cases: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
        ("gzip bomb: 1 GiB of zeros in ~1 MiB", "/v2/models/add_sub/infer", gzip_bomb(1 << 30),
         {"Content-Encoding": "gzip"}, 413, "inflates to more exceeds the limit"),
        ("a body over the limit", "/v2/models/add_sub/infer",
         bytes(BODY_LIMIT + 1), {}, 413, f"exceeds the limit of {BODY_LIMIT} bytes"),
        ("32 Mi JSON numbers", "/v2/models/identity_fp32/infer",
         json_body("FP32", [1, near_limit // 2], zeros), {}, 413, "JSON values"),
        ("13 Mi JSON strings", "/v2/models/identity_bytes/infer",
         json_body("BYTES", [1, near_limit // 5], strings), {}, 413, "JSON values"),
        ("16 Mi empty binary BYTES elements", "/v2/models/identity_bytes/infer",
         many_bytes, many_headers, 413, "max_object_elements"),
        ("one 64 MiB BYTES element", "/v2/models/identity_bytes/infer",
         long_bytes, long_headers, 413, "max_bytes_element"),
        ("a shape of 2^62 elements", "/v2/models/identity_fp32/infer",
         binary_body("FP32", [2**31, 2**31], bytes(8))[0],
         binary_body("FP32", [2**31, 2**31], bytes(8))[1], 413, "max_tensor_elements"),
        ("nesting 30 Mi lists deep", "/v2/models/identity_fp32/infer",
         json_body("FP32", [1], b"[" * (30 << 20)), {}, 413, "JSON values"),
        ("a repository index body of 64 MiB", "/v2/repository/index",
         b'{"ready": true, "x": "' + b"x" * near_limit + b'"}', {}, 413, "1048576 bytes"),
    ]  # fmt: skip
    bystander = Bystander(hostile.http_url)
    bystander.start()
    try:
        with httpx.Client(base_url=f"http://{hostile.http_url}", timeout=120) as client:
            for what, path, body, headers, status, message in cases:
                with peak.over(what):
                    response = client.post(path, content=body, headers=headers)
                assert response.status_code == status, (what, response.text[:300])
                assert message in response.json()["error"], (what, response.text[:300])
        # gRPC: typed contents, counted on the wire before protobuf parses them.
        with grpc.insecure_channel(
            hostile.grpc_url, options=[("grpc.max_send_message_length", 128 << 20)]
        ) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="identity_bytes")
            tensor = request.inputs.add(name="INPUT", datatype="BYTES", shape=[1, 8 << 20])
            tensor.contents.bytes_contents.extend([b""] * (8 << 20))
            with (
                peak.over("8 Mi typed BYTES elements over gRPC"),
                pytest.raises(grpc.RpcError) as info,
            ):
                stub.ModelInfer(request, timeout=120)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_object_elements" in info.value.details()
    finally:
        bystander.stop()
    for what, grown in peak.grown.items():
        print(f"{what}: replica peak +{grown / 2**20:.0f} MiB")
    print(f"bystander: {bystander.answered} answered, slowest {bystander.slowest_s * 1000:.0f} ms")
    assert max(peak.grown.values()) < PEAK_BOUND, peak.grown
    assert bystander.failed == [] and bystander.answered > 0
    still = serve.get_app_handle(hostile.app).endpoints.remote().result(timeout_s=30)["pid"]
    assert int(still) == pid  # not replaced: it never crashed
