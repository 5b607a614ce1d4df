"""Prometheus metrics through the real server: two replicas share the metrics port and every
scrape, whichever replica answers it, reports the node's exact counts; the exposition passes
``promtool check metrics``; a real Prometheus server scrapes it and answers PromQL queries."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Server, running_server
from tests.integration.prometheus import PROMTOOL, Prometheus

Key = tuple[str, str, str, str]
"""(model, version, protocol, code)."""

SLOW_BODY = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [[7.0]]}]}
)


@pytest.fixture(scope="module")
def metered(ray_serve: None, test_repository: Path) -> Iterator[Server]:
    with running_server("metered", test_repository, replicas=2) as started:
        yield started


def scrape(server: Server) -> tuple[str, str]:
    """One scrape on a new connection (so the kernel may hand it to either replica)."""
    response = httpx.get(f"http://{server.metrics_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, response.headers["served-by"]


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return found


def requests_total(text: str) -> dict[Key, int]:
    counted = samples(text)["serving_requests_total"]
    return {
        (d["model"], d["version"], d["protocol"], d["code"]): int(v)
        for labels, v in counted.items()
        for d in [dict(labels)]
    }


def add_sub_inputs(module: type, n: int, dtype: str = "FP32") -> list[object]:
    a = np.full((1, 16), n, dtype=np.float32)
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        tensor = module.InferInput(name, [1, 16], dtype)  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(a)
        tensors.append(tensor)
    return tensors


def drive_mix(server: Server) -> collections.Counter[Key]:
    """Successes, bad input, unknown models and queue-full rejections, over HTTP and gRPC;
    returns what the client saw."""
    seen: collections.Counter[Key] = collections.Counter()
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for n in range(12):
        http.infer("add_sub", add_sub_inputs(httpclient, n))
        seen["add_sub", "1", "http", "200"] += 1
    for n in range(8):
        grpc.infer("add_sub", add_sub_inputs(grpcclient, n))
        seen["add_sub", "1", "grpc", "200"] += 1
    url = f"http://{server.http_url}/v2/models/add_sub/infer"
    wrong_shape = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32",
                               "data": [1, 2, 3]}]}  # fmt: skip
    for _ in range(3):
        assert httpx.post(url, json=wrong_shape).status_code == 400
        seen["add_sub", "1", "http", "400"] += 1
    for _ in range(2):
        tensor = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
        with pytest.raises(Exception, match="INPUT"):
            grpc.infer("add_sub", [tensor])
        seen["add_sub", "1", "grpc", "400"] += 1
    for _ in range(2):
        assert httpx.post(f"http://{server.http_url}/v2/models/nope/infer", json={}).status_code
        seen["", "", "http", "404"] += 1
    # slow_batched queues two requests behind the running batch and refuses the rest.
    slow = f"http://{server.http_url}/v2/models/slow_batched/infer"
    clients = [httpx.Client(timeout=60) for _ in range(16)]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda c: c.post(slow, content=SLOW_BODY).status_code, clients))
    for c in clients:
        c.close()
    assert set(codes) <= {200, 503} and 503 in codes, codes
    for code in codes:
        seen["slow_batched", "1", "http", str(code)] += 1
    return seen


def test_every_scrape_reports_the_nodes_exact_counts(metered: Server) -> None:
    expected = drive_mix(metered)
    deadline = time.monotonic() + 10
    while requests_total(scrape(metered)[0]) != dict(expected):
        assert time.monotonic() < deadline, "the counts never settled on what was sent"
        time.sleep(0.1)
    answered_by = set()
    scrapes = 0
    while scrapes < 6 or len(answered_by) < 2:
        text, replica = scrape(metered)
        answered_by.add(replica)
        scrapes += 1
        assert requests_total(text) == dict(expected), f"scrape {scrapes} by {replica}"
        found = samples(text)
        for protocol in ("http", "grpc"):
            labels = (("model", "add_sub"), ("protocol", protocol), ("version", "1"))
            answered = sum(n for k, n in expected.items() if k[:3] == ("add_sub", "1", protocol))
            assert found["serving_request_duration_seconds_count"][labels] == answered
            assert found["serving_request_duration_seconds_bucket"][
                (("le", "+Inf"), *labels)
            ] == answered  # fmt: skip
        version = (("model", "slow_batched"), ("version", "1"))
        ok = expected["slow_batched", "1", "http", "200"]
        refused = expected["slow_batched", "1", "http", "503"]
        assert found["serving_rejections_total"][(*version[:1], ("reason", "queue_full"),
                                                  *version[1:])] == refused  # fmt: skip
        assert found["serving_queue_duration_seconds_count"][version] == ok
        assert found["serving_compute_duration_seconds_count"][version] == ok
        assert found["serving_inferences_total"][version] == ok
        executions = found["serving_executions_total"][version]
        assert 0 < executions <= ok  # batched: fewer executions than requests
        assert found["serving_batch_size_count"][version] == executions
        assert found["serving_batch_size_sum"][version] == ok
        assert found["serving_replicas_ready"][()] == 2
        assert found["serving_model_version_loaded"][version] == 2
        assert scrapes < 60, f"every scrape went to {answered_by}"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: prometheus)")
def test_the_exposition_passes_promtool(metered: Server) -> None:
    drive_mix(metered)
    text, _ = scrape(metered)
    assert "serving_request_duration_seconds_bucket" in text
    checked = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


def test_triton_aliases_are_off_by_default(metered: Server) -> None:
    assert "nv_inference_request_success" not in scrape(metered)[0]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")
def test_a_real_prometheus_scrapes_it_and_answers_promql(metered: Server, tmp_path: Path) -> None:
    with Prometheus(tmp_path, targets=[metered.metrics_url]) as prometheus:
        prometheus.wait_until_up()
        http = httpclient.InferenceServerClient(metered.http_url)
        url = f"http://{metered.http_url}/v2/models/digits/infer"
        pixels = np.zeros((1, 64), np.float32)
        tensor = httpclient.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(pixels)
        bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                           "data": [0, 0, 0]}]}  # fmt: skip
        ok = failed = 0
        ends = time.monotonic() + 4
        while time.monotonic() < ends:
            for _ in range(4):
                http.infer("digits", [tensor])
                ok += 1
            assert httpx.post(url, json=bad).status_code == 400
            failed += 1
        prometheus.wait_for_scrape_after(time.time())
        p99 = prometheus.query(
            "histogram_quantile(0.99, sum by (le) "
            '(rate(serving_request_duration_seconds_bucket{model="digits"}[1m])))'
        )
        assert 0 < p99 < 1.0
        ratio = prometheus.query(
            'sum(rate(serving_requests_total{model="digits", code!="200"}[1m]))'
            ' / sum(rate(serving_requests_total{model="digits"}[1m]))'
        )
        assert ratio == pytest.approx(failed / (ok + failed), abs=0.05)
        exact = prometheus.query(
            'sum(serving_requests_total{model="digits", code!="200"})'
            ' / sum(serving_requests_total{model="digits"})'
        )
        assert exact == pytest.approx(failed / (ok + failed), rel=1e-9)
        rules = prometheus.get("/api/v1/rules")["data"]["groups"]
        alerts = {rule["name"] for group in rules for rule in group["rules"]}
        assert {"ServingLatencyP99High", "ServingErrorRateHigh", "ServingNoReadyReplicas",
                "ServingInputDrift", "ServingRolloutRolledBack"} <= alerts  # fmt: skip
        assert all(rule["health"] == "ok" for g in rules for rule in g["rules"])


def test_serving_top_shows_every_replica_added_up(metered: Server) -> None:
    before = httpx.get(f"http://{metered.http_url}/v2/-/summary", timeout=15).json()
    http = httpclient.InferenceServerClient(metered.http_url)
    for n in range(10):
        http.infer("add_sub", add_sub_inputs(httpclient, n))
    summary = httpx.get(f"http://{metered.http_url}/v2/-/summary", timeout=15).json()
    (row,) = [v for v in summary["versions"] if (v["model"], v["version"]) == ("add_sub", "1")]
    (old,) = [v for v in before["versions"] if (v["model"], v["version"]) == ("add_sub", "1")]
    ok = row["statistics"]["inference_stats"]["success"]["count"]
    assert ok - old["statistics"]["inference_stats"]["success"]["count"] == 10
    assert sum(row["latency_counts"]) - sum(old["latency_counts"]) == 10
    assert row["replicas"] == 2 and row["in_flight"] == 0
    shown = subprocess.run(
        [sys.executable, "-m", "serving.cli", "top", "--once", "--interval", "0.5",
         "--url", metered.http_url],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    cells = [[c.strip() for c in x.split("│")] for x in shown.stdout.splitlines()]
    (line,) = [c for c in cells if len(c) > 11 and c[1:3] == ["add_sub", "1"]]
    assert line[10] == "2", shown.stdout  # replicas
