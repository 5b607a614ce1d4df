"""The benchmark suite's quick path against the live test server: reports produced, consistent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from benchmarks.load import Target, sender
from benchmarks.report import write
from benchmarks.suite import Profile, measure_profile
from tests.integration.conftest import Server

TINY = Profile(
    "tiny", ("digits",), ("http_binary", "http_binary_tritonclient", "grpc", "grpc_tritonclient"),
    (1, 2), window_s=0.3,
    max_windows=3, warmup_s=0.1, goodput_probes=3, replicas=(1,), in_process_s=0.2,
)  # fmt: skip


def test_quick_profile_writes_consistent_reports(server: Server, tmp_path: Path) -> None:
    servers = {1: {"http": server.http_url, "grpc": server.grpc_url}}
    result = measure_profile(TINY, server.repository, servers, threads=2)
    files = write(result, tmp_path, "tiny", {"profile": "tiny"})
    names = {f.name for f in files}
    assert names == {"tiny.json", "tiny.md", "tiny-digits.png"}
    assert (tmp_path / "tiny-digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((tmp_path / "tiny.json").read_text())
    assert {"commit", "cpu", "cores", "libraries", "parameters"} <= set(report["context"])
    rows = report["rows"]
    closed = [r for r in rows if r["mode"] == "closed"]
    opened = [r for r in rows if r["mode"] == "open"]
    assert len(closed) == 4 * 2 + 1  # protocols x concurrency, plus batching on
    assert {r["protocol"] for r in closed} == set(TINY.protocols)
    assert len(opened) == len(report["goodput"][0]["probes"]) <= TINY.goodput_probes
    for row in rows:
        assert row["requests"] > 0 and row["throughput_rps"] > 0
        assert row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert 1 <= row["windows"] <= TINY.max_windows
        assert row["vs_best"] <= row["vs_batch1"]
    assert all(r["error_count"] == 0 for r in closed), [r["errors"] for r in closed]
    batched = [r for r in closed if r["batching"] == "on"]
    assert batched[0]["rows_per_execution"] >= 1
    limit = report["in_process"]["digits"]
    assert limit["best_rps"] >= limit["batch1_rps"] > 0
    layouts = {r["layout"] for r in limit["sweep"]}
    assert layouts == {"1 x 2 threads", "2 x 1 threads"}  # one session on both, or two on one
    assert limit["best_rps"] == max(r["throughput_rps"] for r in limit["sweep"])
    goodput = report["goodput"][0]
    assert goodput["bound_ms"] == 100.0
    if goodput["goodput_rps"] > 0:
        assert goodput["p99_ms"] <= 100.0

    table = (tmp_path / "tiny.md").read_text()
    assert table.count("| digits |") == len(rows) + 2  # every row, the limit and the goodput


@pytest.mark.parametrize("protocol", ["http_binary", "grpc"])
def test_encoded_senders_check_every_answer(server: Server, protocol: str) -> None:
    """The pre-encoded senders send real requests, and a refusal raises with its status."""
    urls = {"http": server.http_url, "grpc": server.grpc_url}
    rows = np.arange(2 * 16, dtype=np.float32).reshape(2, 1, 16)

    async def exchange(model: str) -> Any:
        send, client = sender(protocol, urls, Target(model, "INPUT", "FP32", rows, ("OUTPUT",)))
        try:
            return await send(1)
        finally:
            await client.close()

    answer = asyncio.run(exchange("identity_fp32"))
    if protocol == "grpc":  # the raw ModelInferResponse
        (tensor,) = answer.outputs
        values = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
        values = values.reshape(tuple(tensor.shape))
    else:  # tritonclient's InferResult
        values = answer.as_numpy("OUTPUT")
    np.testing.assert_array_equal(values, rows[1])

    with pytest.raises((InferenceServerException, grpc.aio.AioRpcError)) as refused:
        asyncio.run(exchange("no_such_model"))
    if protocol == "grpc":
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[union-attr]
    else:
        assert refused.value.status() == "404"  # type: ignore[union-attr]
