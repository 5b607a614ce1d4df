"""Observing requests in one process: a request recorded once with its protocol and status;
windows as JSON; a node's exposition from several replicas' snapshots (a stopped replica's
counters stay, its gauges go); Triton's names on request; traceparent and the access log
through the pipeline; a trace kept through the batcher."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.clock import MONOTONIC
from serving.models.scheduling.batcher import Batcher, BatcherOptions
from serving.observe.logs import Trace, current_trace
from serving.observe.metrics import DriftGauge
from serving.observe.node import NodeMetrics, ReplicaSnapshot
from serving.observe.stats import Histogram, ShadowStats, StatsWindow
from serving.traffic.routing import TrafficPolicy
from tests.unit.test_pipeline import Stack, X, run, start


def flat(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def recorded(successes: int, failures: int = 0, protocol: str = "http") -> StatsWindow:
    window = StatsWindow()
    for _ in range(successes):
        window.record(protocol, 200, 400_000, rows=2, input_ns=1, queue_ns=50_000, infer_ns=9)
        window.record_execution(2, 9)
    from serving.errors import OverloadedError

    for _ in range(failures):
        window.record(protocol, 503, 1_000, error=OverloadedError(queued=1, max_queued=1))
    return window.fold()


def test_one_record_counts_the_answer_its_time_and_why_it_was_refused() -> None:
    lazy = StatsWindow()
    lazy.record("grpc", 200, 1_000, rows=1)
    assert lazy.answers == {} and lazy.requests == 1  # any read adds what was recorded
    assert lazy.answers == {("grpc", 200): 1} and lazy.last_inference_ms > 0
    window = recorded(3, failures=2)
    assert window.answers == {("http", 200): 3, ("http", 503): 2}
    assert window.durations["http"].count == 5
    assert window.stages["success"].count == 3 and window.stages["fail"].count == 2
    assert window.rejections == {"queue_full": 2}
    assert window.queue.count == window.compute.count == 3
    again = StatsWindow.from_json(json.loads(json.dumps(window.to_json())))
    assert again == window
    assert window.minus(recorded(1)).answers[("http", 200)] == 2


def test_a_histogram_quantile_interpolates_in_its_bucket_as_promql_does() -> None:
    histogram = Histogram()
    for _ in range(100):
        histogram.add(400_000)  # 0.4 ms: the (0.25 ms, 0.5 ms] bucket
    assert histogram.quantile(0.5) == pytest.approx(0.000375)
    assert Histogram().quantile(0.99) is None


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def snapshot(pid: int, replica: str, window: StatsWindow, queued: int) -> ReplicaSnapshot:
    return ReplicaSnapshot(
        pid=pid,
        replica=replica,
        ready=True,
        windows={("m", 1): window},
        in_flight={("m", 1): queued + 1},
        queued={("m", 1): queued},
        loaded=[("m", 1)],
        loads={"m": [0.2]},
    )


def test_a_scrape_reports_every_replica_of_the_node(tmp_path: Path) -> None:
    gone = snapshot(dead_pid(), "gone", recorded(5, failures=1), queued=7)
    (tmp_path / "gone.json").write_bytes(gone.to_json())
    sibling = snapshot(os.getpid(), "sibling", recorded(2, protocol="grpc"), queued=3)
    (tmp_path / "sibling.json").write_bytes(sibling.to_json())
    own = snapshot(os.getpid(), "own", recorded(1), queued=1)
    drift = [DriftGauge("m", 1, True, 900, {"input": (1e-6, 0.4)})]
    metrics = NodeMetrics(tmp_path, lambda: own, drift=lambda: drift)

    async def render() -> str:
        return (await metrics.render()).decode()

    text = asyncio.run(render())
    found = flat(text)
    m1 = (("model", "m"), ("version", "1"))

    def answered(protocol: str, code: str) -> float:
        labels = (("code", code), ("model", "m"), ("protocol", protocol), ("version", "1"))
        return found[("serving_requests_total", labels)]

    assert answered("http", "200") == 5 + 1  # the stopped replica's counters stay
    assert answered("http", "503") == 1
    assert answered("grpc", "200") == 2
    assert found[("serving_rejections_total", (*m1[:1], ("reason", "queue_full"), *m1[1:]))] == 1
    assert found[("serving_queue_depth", m1)] == 3 + 1  # its gauges do not
    assert found[("serving_requests_in_flight", m1)] == 4 + 2
    assert found[("serving_model_version_loaded", m1)] == 2
    assert found[("serving_replicas_ready", ())] == 2
    assert found[("serving_inferences_total", m1)] == 2 * (5 + 2 + 1)
    assert found[("serving_batch_size_count", m1)] == 8
    assert found[("serving_model_load_duration_seconds_count", (("model", "m"),))] == 3
    assert found[("serving_drift_detected", m1)] == 1
    tensor = (("model", "m"), ("tensor", "input"), ("version", "1"))
    assert found[("serving_drift_p_value", tensor)] == 1e-6
    assert "nv_inference_request_success" not in text


def test_traffic_weights_rollbacks_and_shadow_comparisons(tmp_path: Path) -> None:
    """The weights and rollback counts from the answering replica's traffic tables (the same on
    every replica); the shadow comparisons added up over the node's replicas."""
    sibling = snapshot(os.getpid(), "sibling", recorded(1), queued=0)
    sibling.shadow = {
        ("m", 1, 2): ShadowStats(mirrored=4, pairs=3, errors=1, rows=6, agreed_rows=5)
    }
    (tmp_path / "sibling.json").write_bytes(sibling.to_json())
    own = snapshot(os.getpid(), "own", recorded(1), queued=0)
    own.shadow = {("m", 1, 2): ShadowStats(mirrored=3, pairs=2, dropped=1, rows=2, agreed_rows=1)}
    table = TrafficPolicy(weights=((2, 0.0), (1, 1.0)), salt="s", rollbacks=((2, 1),))
    metrics = NodeMetrics(tmp_path, lambda: own, traffic=lambda: {"m": table})
    found = flat(asyncio.run(metrics.render()).decode())
    assert found[("serving_traffic_weight", (("model", "m"), ("version", "1")))] == 1.0
    assert found[("serving_traffic_weight", (("model", "m"), ("version", "2")))] == 0.0
    assert found[("serving_rollout_rollbacks_total", (("model", "m"), ("version", "2")))] == 1
    pair = (("model", "m"), ("shadow_version", "2"), ("version", "1"))

    def shadow(name: str, label: str, value: str) -> float:
        return found[(name, tuple(sorted((*pair, (label, value)))))]

    assert shadow("serving_shadow_requests_total", "outcome", "compared") == 3 + 2
    assert shadow("serving_shadow_requests_total", "outcome", "failed") == 1
    assert shadow("serving_shadow_requests_total", "outcome", "dropped") == 1
    assert shadow("serving_shadow_rows_total", "agreement", "agreed") == 5 + 1
    assert shadow("serving_shadow_rows_total", "agreement", "disagreed") == 1 + 1


def test_triton_names_on_request(tmp_path: Path) -> None:
    own = snapshot(os.getpid(), "own", recorded(4, failures=1), queued=2)
    metrics = NodeMetrics(tmp_path, lambda: own, triton_aliases=True)
    found = flat(asyncio.run(metrics.render()).decode())
    labels = (("model", "m"), ("version", "1"))
    assert found[("nv_inference_request_success", labels)] == 4
    assert found[("nv_inference_request_failure", labels)] == 1
    assert found[("nv_inference_count", labels)] == 8
    assert found[("nv_inference_exec_count", labels)] == 4
    assert found[("nv_inference_queue_duration_us", labels)] == 4 * 50
    assert found[("nv_inference_pending_request_count", labels)] == 2


def test_a_snapshot_file_is_rewritten_only_when_it_changed(tmp_path: Path) -> None:
    window = recorded(1)
    own = snapshot(os.getpid(), "own", window, queued=0)

    async def main() -> None:
        metrics = NodeMetrics(tmp_path / "node", lambda: own, flush_s=3600)
        metrics.start()
        (path,) = (tmp_path / "node").glob("*.json")
        first = path.stat().st_mtime_ns
        metrics.flush()
        assert path.stat().st_mtime_ns == first
        window.record("http", 200, 1_000)
        metrics.flush()
        assert ReplicaSnapshot.from_json(path.read_bytes()).windows[("m", 1)] == window
        await metrics.stop()
        assert ReplicaSnapshot.from_json(path.read_bytes()).ready is False

    asyncio.run(main())


def test_traceparent_and_the_access_log(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def test(stack: Stack) -> None:
        await start(stack)
        stack.dataplane.access_log.enabled = True
        with caplog.at_level(logging.INFO, logger="serving.access"):
            traced = await stack.http.post(
                "/v2/models/m/infer",
                json={"inputs": [X]},
                headers={"traceparent": parent, "x-request-id": "req-7"},
            )
            fresh = await stack.http.post(
                "/v2/models/m/versions/1/infer",
                json={"inputs": [X]},
                headers={"traceparent": "not-a-trace"},
            )
            bad = await stack.http.post(
                "/v2/models/m/infer", json={"inputs": [{**X, "shape": [9]}]}
            )
            await stack.http.get("/v2/health/ready")
        answer = traced.headers["traceparent"]
        assert answer.startswith("00-0af7651916cd43dd8448eb211c80319c-") and answer.endswith("-01")
        assert answer.split("-")[2] != "b7ad6b7169203331"  # this server's own span
        assert fresh.headers["traceparent"].split("-")[1] != "0af7651916cd43dd8448eb211c80319c"
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serving.access"]
        assert len(lines) == 3  # the health check is left out
        first, second, third = lines
        assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert first["parent_id"] == "b7ad6b7169203331" and first["request_id"] == "req-7"
        assert (first["model"], first["version"], first["protocol"], first["status"]) == (
            "m", "2", "http", 200
        )  # fmt: skip
        assert first["latency_ms"] > 0 and first["rows"] == 2
        assert second["version"] == "1" and second["parent_id"] is None
        assert third["status"] == 400 and bad.status_code == 400

    run(repo, test)


def test_the_batcher_keeps_each_request_s_trace(caplog: pytest.LogCaptureFixture) -> None:
    async def execute(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        await asyncio.sleep(0.01)
        return [inputs["x"]]

    async def main() -> None:
        batcher = Batcher(execute, BatcherOptions(max_batch_size=8), name="b", clock=MONOTONIC)

        async def one(i: int) -> None:
            current_trace.set(Trace.start(f"00-{i:032x}-{1:016x}-01"))
            await batcher.submit({"x": np.full((1, 1), i, np.float32)})

        await asyncio.gather(*(one(i) for i in range(1, 6)))
        await batcher.close()

    with caplog.at_level(logging.DEBUG, logger="serving.models.scheduling.batcher"):
        asyncio.run(main())
    logged = " ".join(r.getMessage() for r in caplog.records if "traces" in r.getMessage())
    for i in range(2, 6):  # the first runs alone at once; the rest queue and go as a batch
        assert f"{i:032x}" in logged


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    from tests.unit.fakes import write_model

    write_model(tmp_path, "m", 1)
    write_model(tmp_path, "m", 2, config="version_policy: all\nmax_batch_size: 8\n")
    return tmp_path
