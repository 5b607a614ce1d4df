"""Dynamic batching through the real server: results, statistics, overload, disconnects."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as httpclient

from tests.integration.clients import In, V2Client
from tests.integration.conftest import Server

SLOW_BODY = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [[7.0]]}]}
)


def successes(client: V2Client, model: str) -> tuple[int, int, int]:
    stats = client.statistics(model)[0]
    return (
        stats.get("inference_count", 0),
        stats.get("execution_count", 0),
        stats["inference_stats"]["success"].get("count", 0),
    )


def test_concurrent_requests_are_batched_with_unbatched_results(
    client: V2Client, server: Server
) -> None:
    x = np.load(server.repository / "digits/evaluation.npz")["inputs"][:96]
    session = ort.InferenceSession(str(server.repository / "batched_digits/1/model.onnx"))
    expected = [session.run(None, {"input": x[i : i + 1]}) for i in range(len(x))]
    before = successes(client, "batched_digits")

    local = threading.local()

    def one(i: int) -> tuple[int, dict[str, np.ndarray]]:
        # tritonclient's sync clients are not thread-safe: one per thread.
        if not hasattr(local, "client"):
            local.client = V2Client(client.protocol, server.http_url, server.grpc_url)
        result = local.client.infer("batched_digits", [In("input", x[i : i + 1], "FP32")])
        return i, result.outputs

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(len(x))))
    for i, outputs in results:
        np.testing.assert_allclose(outputs["probabilities"], expected[i][0], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(outputs["label"], expected[i][1])
    rows, executions, requests = (
        a - b for a, b in zip(successes(client, "batched_digits"), before, strict=True)
    )
    assert (rows, requests) == (len(x), len(x))
    assert executions < rows / 2, (executions, rows)
    batch_stats = client.statistics("batched_digits")[0]["batch_stats"]
    assert max(b["batch_size"] for b in batch_stats) > 1


def test_flood_beyond_the_queue_gets_fast_503s_and_accepted_requests_succeed(
    server: Server,
) -> None:
    url = f"http://{server.http_url}/v2/models/slow_batched/infer"
    finished: list[tuple[float, int]] = []
    lock = threading.Lock()

    def send(_: int) -> httpx.Response:
        response = httpx.post(url, content=SLOW_BODY, timeout=60)
        with lock:
            finished.append((time.monotonic(), response.status_code))
        return response

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, range(16)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    accepted = [r for r in responses if r.status_code == 200]
    assert rejected and accepted
    for response in rejected:
        assert "server overloaded" in response.json()["error"]
        assert int(response.headers["Retry-After"]) >= 1
    for response in accepted:
        assert response.json()["outputs"][0]["data"] == [7.0]
    # Refusals come back while accepted work is still running: the first 503 lands before the
    # last 200.
    order = [status for _, status in sorted(finished)]
    assert order.index(503) < len(order) - 1 - order[::-1].index(200)


def test_request_timeout_in_the_queue_is_504(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http_url, concurrency=2)
    x = np.ones((1, 1), dtype=np.float32)

    def request() -> list[httpclient.InferInput]:
        tensor = httpclient.InferInput("x", [1, 1], "FP32")
        tensor.set_data_from_numpy(x)
        return [tensor]

    running = client.async_infer("slow_batched", request())
    time.sleep(0.05)
    with pytest.raises(httpclient.InferenceServerException) as caught:
        client.infer("slow_batched", request(), timeout=1000)  # µs
    assert caught.value.status() == "504"
    assert "timed out after 1 ms" in caught.value.message()
    np.testing.assert_array_equal(running.get_result().as_numpy("y"), x)


def test_client_that_disconnects_is_dropped_from_the_queue(server: Server) -> None:
    stats = V2Client("http", server.http_url, server.grpc_url)
    before = successes(stats, "slow_batched")
    host, port = server.http_url.split(":")
    request = (
        f"POST /v2/models/slow_batched/infer HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(SLOW_BODY)}\r\n\r\n"
    ).encode() + SLOW_BODY
    url = f"http://{server.http_url}/v2/models/slow_batched/infer"
    # Clients built up front (httpx builds an SSL context per client, tens of ms on a busy
    # machine), so the first request is surely running (~0.3 s) when the leaver queues behind it.
    with (
        ThreadPoolExecutor(2) as pool,
        httpx.Client(timeout=60) as a,
        httpx.Client(timeout=60) as b,
    ):
        first = pool.submit(a.post, url, content=SLOW_BODY)
        time.sleep(0.1)
        with socket.create_connection((host, int(port))) as leaver:
            leaver.sendall(request)
            time.sleep(0.01)
        last = pool.submit(b.post, url, content=SLOW_BODY)
        assert first.result().status_code == 200
        assert last.result().status_code == 200
    rows, _, requests = (
        a - b for a, b in zip(successes(stats, "slow_batched"), before, strict=True)
    )
    assert (rows, requests) == (2, 2)
