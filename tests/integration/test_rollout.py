"""Traffic tables and rollouts on a real application of two replicas, through httpx and
tritonclient: sticky splits, the offline gate, shadow traffic, automatic rollbacks (timed), a
controller restart mid-rollout, and a promotion with zero failed requests. The tests run in
file order: the last one unloads digits version 1."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from serving.control import cluster
from serving.errors import ErrorCode
from serving.status import STATUS
from tests.integration import canaries
from tests.integration.clients import In
from tests.integration.conftest import Server, running_server
from tests.integration.traffic import Traffic

PIXELS = np.full((1, 64), 8.0, dtype=np.float32)
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [8.0] * 64}]}
LOAD_PER_S = 100.0
SLOWER_BY_S = 0.05
BAD_SHARE = 0.75
"""Of the requests to the failing canary's model, those it fails: a rollback needs two
failures (one, at a floor failure rate of 0.1 %, is not evidence enough), so the time it takes
is bounded by how soon the canary gets its second bad input (at 5 % of 100 req/s, 3.75 a
second)."""
RISKY = "risky"
"""A model of three versions: 1 (digits' MLP), 2 (the same, failing some inputs) and 3 (the
same, slower)."""


@pytest.fixture(scope="module")
def app(
    ray_serve: None, demo_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("rollout") / "repo"
    shutil.copytree(demo_repository, repository)
    risky = repository / RISKY
    risky.mkdir()
    shutil.copy(repository / "digits" / "config.yaml", risky / "config.yaml")
    base = onnx.load(str(repository / "digits" / "2" / "model.onnx"))
    canaries.save(base, risky / "1" / "model.onnx")
    canaries.save(canaries.failing(base), risky / "2" / "model.onnx")
    slow, extra_s = canaries.slower_by(base, SLOWER_BY_S)
    print(f"version 3 of {RISKY} is slower by {extra_s * 1000:.0f} ms a call (measured)")
    canaries.save(slow, risky / "3" / "model.onnx")
    with running_server("rollout", repository, replicas=2) as started:
        yield started


def scraped(app: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The node's metrics (both replicas run on this machine's one node)."""
    text = httpx.get(f"http://{app.metrics_url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def url(app: Server, path: str) -> str:
    return f"http://{app.http_url}{path}"


def post(app: Server, path: str, body: object) -> dict[str, Any]:
    answer = httpx.post(url(app, path), json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def get(app: Server, path: str) -> dict[str, Any]:
    answer = httpx.get(url(app, path), timeout=30)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def cli(app: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args, "--url", app.http_url],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def rows(app: Server, count: int) -> np.ndarray:
    with np.load(app.repository / "digits" / "evaluation.npz") as data:
        inputs: np.ndarray = data["inputs"][:count].astype(np.float32)
    return inputs


def infer_json(client: httpx.Client, app: Server, path: str, row: np.ndarray) -> httpx.Response:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": row.tolist()}]}  # fmt: skip
    answer = client.post(url(app, path), json=body)
    assert answer.status_code == 200, answer.text
    return answer


def outputs_of(answer: httpx.Response) -> dict[str, np.ndarray]:
    return {out["name"]: np.asarray(out["data"]) for out in answer.json()["outputs"]}


def weight_zero_everywhere(app: Server, since: float, timeout_s: float = 20.0) -> float:
    """When (``time.monotonic()``, comparable across this machine's processes) the last live
    replica had applied the first revision the controller committed after ``since``: the
    rollback, a canary weight of 0. Taken from the controller's own record of when each
    replica's report of applying it arrived (so, if anything, late)."""
    handle = cluster.controller(app.app)
    deadline = time.monotonic() + timeout_s
    while True:
        timings = ray.get(handle.timings.remote(), timeout=10)
        live = {r.replica for r in ray.get(handle.replicas.remote(), timeout=10)}
        later = sorted((r, seen) for r, (at, seen) in timings.items() if at >= since)
        if later and live <= set(later[0][1]):
            seen = later[0][1]
            return max(seen[replica] for replica in live)
        assert time.monotonic() < deadline, f"no revision applied everywhere: {later}, {live}"
        time.sleep(0.1)


def until_status(app: Server, model: str, wanted: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status = get(app, f"/v2/models/{model}/rollout")
    while status["status"] != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
        status = get(app, f"/v2/models/{model}/rollout")
    assert status["status"] == wanted, status
    return status


def test_sticky_keys_and_the_version_header(app: Server) -> None:
    set_ = httpx.post(url(app, "/v2/models/digits/traffic"), json={"weights": {"1": 50, "2": 50}})
    assert set_.status_code == 200, set_.text
    assert set_.json()["weights"] == {"2": 50.0, "1": 50.0}
    try:
        seen: dict[str, set[str]] = {}
        with httpx.Client() as client:
            for index in range(80):  # 40 keys: all of them on one version by chance is 2^-39
                key = f"user-{index % 40}"
                answer = client.post(
                    url(app, "/v2/models/digits/infer"), json=BODY, headers={"x-routing-key": key}
                )
                assert answer.status_code == 200
                assert answer.headers["x-model-version"] == answer.json()["model_version"]
                seen.setdefault(key, set()).add(answer.json()["model_version"])
        assert all(len(versions) == 1 for versions in seen.values())  # sticky
        assert set().union(*seen.values()) == {"1", "2"}
    finally:
        cleared = httpx.post(url(app, "/v2/models/digits/traffic"), json={})
        assert cleared.status_code == 200 and cleared.json()["table"] is False


@pytest.mark.parametrize(
    ("path", "body", "status", "named"),
    [
        ("/traffic", {"weights": {"1": "nan"}}, 400, "weights.1"),
        ("/traffic", {"weights": {"1": "inf", "2": 1}}, 400, "weights.1"),
        ("/traffic", {"weights": {"1": -1, "2": 2}}, 400, "must not be negative"),
        ("/traffic", {"weights": {"1": 0}}, 400, "more than 0"),
        ("/traffic", {"weights": {"one": 1}}, 400, "'weights'"),
        ("/traffic", {"weight": {"1": 1}}, 400, "weight: Extra inputs"),
        ("/traffic", {"weights": {"9": 1}}, 400, "version 9 of digits is not loaded"),
        ("/traffic", {"shadow": {"version": "2", "fraction": 2}}, 400, "shadow.fraction"),
        ("/traffic", [1, 2], 400, "traffic"),
        ("/rollout", {"version": "2", "from": "1", "steps": [5, 50]}, 400, "last step must be 100"),
        ("/rollout", {"version": "2", "from": "1", "steps": [50, "shadow", 100]}, 400, "shadow"),
        ("/rollout", {"version": "2", "from": "2"}, 400, "another version"),
        ("/rollout", {"version": "2", "from": "1", "gates": {"error_alpha": 2}}, 400,
         "gates.error_alpha"),
        ("/rollout", {"version": "7", "from": "1"}, 404, "7"),
        ("/rollout", {"from": "1"}, 400, "version: Field required"),
        ("/rollout/explode", {}, 400, "unknown rollout action 'explode'"),
        ("/rollout/promote", {}, 404, "digits has no rollout"),
    ],
)  # fmt: skip
def test_bad_admin_calls_get_the_right_status_and_say_why(
    app: Server, path: str, body: object, status: int, named: str
) -> None:
    answer = httpx.post(url(app, f"/v2/models/digits{path}"), json=body, timeout=30)
    assert answer.status_code == status, answer.text
    assert named in answer.json()["error"], answer.json()
    assert get(app, "/v2/models/digits/traffic")["table"] is False  # nothing changed


def test_admin_calls_for_an_unknown_model_are_404(app: Server) -> None:
    for method, path, body in [
        ("GET", "/traffic", None), ("POST", "/traffic", {"weights": {"1": 1}}),
        ("GET", "/rollout", None), ("POST", "/rollout", {"version": "2"}),
        ("POST", "/rollout/abort", {}),
    ]:  # fmt: skip
        answer = httpx.request(method, url(app, f"/v2/models/nope{path}"), json=body)
        assert answer.status_code == 404, (path, answer.text)
        assert "nope" in answer.json()["error"]
    broken = httpx.post(url(app, "/v2/models/digits/traffic"), content=b"{", timeout=10)
    assert broken.status_code == 400 and "JSON" in broken.json()["error"], broken.text


def test_a_worse_candidate_is_refused_by_the_offline_gate(app: Server) -> None:
    answer = httpx.post(
        url(app, "/v2/models/digits/rollout"), json={"version": "1", "from": "2"}, timeout=30
    )
    assert answer.status_code == STATUS[ErrorCode.CONFLICT].http
    message = answer.json()["error"]
    assert "offline gate" in message and message.count("%") >= 2, message
    refused = cli(app, "rollout", "start", "digits", "1", "--from", "2")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "409" in refused.stdout and "offline gate" in refused.stdout
    assert httpx.get(url(app, "/v2/models/digits/rollout")).status_code == 404


def test_the_traffic_commands(app: Server) -> None:
    split = cli(app, "traffic", "set", "digits", "1=90", "2=10")
    assert split.returncode == 0, split.stdout + split.stderr
    assert "traffic table  v2 10%  v1 90%" in split.stdout, split.stdout
    shown = cli(app, "traffic", "show", "digits", "--json")
    assert shown.returncode == 0 and '"1": 90.0' in shown.stdout, shown.stdout
    mirrored = cli(app, "traffic", "set", "digits", "1=1", "--shadow", "2")
    assert "shadow  v2 gets 25% of requests" in mirrored.stdout, mirrored.stdout
    cleared = cli(app, "traffic", "set", "digits")
    assert "no traffic table (unversioned requests go to v2)" in cleared.stdout, cleared.stdout
    unknown = cli(app, "traffic", "set", "digits", "7=100")
    assert unknown.returncode == 1 and "version 7 of digits is not loaded" in unknown.stdout
    assert get(app, "/v2/models/digits/traffic")["table"] is False


def test_a_shadow_never_changes_a_primary_answer(app: Server) -> None:
    """The same rows through version 1 without and with version 2 shadowing it: identical
    answers; the merged statistics count what the test works out from both versions' answers."""
    sample = rows(app, 60)
    traffic = "/v2/models/digits/traffic"
    with httpx.Client(timeout=30) as client:
        post(app, traffic, {"weights": {"1": 100}})
        alone = [infer_json(client, app, "/v2/models/digits/infer", row) for row in sample]
        assert {a.headers["x-model-version"] for a in alone} == {"1"}
        second = [
            outputs_of(infer_json(client, app, "/v2/models/digits/versions/2/infer", row))
            for row in sample
        ]
        before = _shadow_pair(get(app, traffic), "1", "2")
        post(app, traffic, {"weights": {"1": 100}, "shadow": {"version": "2", "fraction": 1.0}})
        try:
            shadowed = [infer_json(client, app, "/v2/models/digits/infer", row) for row in sample]
            deadline = time.monotonic() + 20
            while True:  # the comparisons arrive with the replicas' next reports
                pair = _shadow_pair(get(app, traffic), "1", "2")
                if pair["pairs"] - before["pairs"] >= len(sample) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            post(app, traffic, {})
    assert [a.content for a in shadowed] == [a.content for a in alone]  # byte for byte
    assert {a.headers["x-model-version"] for a in shadowed} == {"1"}
    first = [outputs_of(a) for a in alone]
    agreed = sum(
        int(
            a["label"][0] == b["label"][0]
            and a["probabilities"].argmax() == b["probabilities"].argmax()
        )
        for a, b in zip(first, second, strict=True)
    )
    differences = [
        np.abs(a["probabilities"] - b["probabilities"]) for a, b in zip(first, second, strict=True)
    ]
    within = sum(
        int(np.all(d <= 1e-4 + 1e-3 * np.abs(a["probabilities"])))
        for d, a in zip(differences, first, strict=True)
    )
    counted = {
        k: pair[k] - before[k]
        for k in ("mirrored", "pairs", "rows", "agreed_rows", "within", "dropped", "errors")
    }
    print(f"shadow v2 of digits: {counted}; the test's own count: {agreed} agreed, {within} within")
    assert counted == {
        "mirrored": len(sample), "pairs": len(sample), "rows": len(sample),
        "agreed_rows": agreed, "within": within, "dropped": 0, "errors": 0,
    }  # fmt: skip
    assert pair["max_abs"] == pytest.approx(max(float(d.max()) for d in differences), abs=1e-6)
    labels = (("model", "digits"), ("shadow_version", "2"), ("version", "1"))
    metrics = scraped(app)
    rows_agreed = metrics[("serving_shadow_rows_total", (("agreement", "agreed"), *labels))]
    compared = metrics[("serving_shadow_requests_total", (*labels[:1], ("outcome", "compared"),
                                                          *labels[1:]))]  # fmt: skip
    assert (rows_agreed, compared) == (before["agreed_rows"] + agreed, before["pairs"] + 60)


def _shadow_pair(document: dict[str, Any], primary: str, shadow: str) -> dict[str, Any]:
    for row in document["shadow_statistics"]:
        if (row["primary"], row["shadow"]) == (primary, shadow):
            return row
    return {"mirrored": 0, "pairs": 0, "rows": 0, "agreed_rows": 0, "within": 0, "dropped": 0,
            "errors": 0, "max_abs": 0.0}  # fmt: skip


def _risky_rollout(app: Server, version: str, **gates: float) -> dict[str, Any]:
    """Start rolling risky out from 1 to ``version`` at 5%, a step it cannot pass during the
    test (only a rollback ends it)."""
    plan = {
        "version": version, "from": "1", "steps": [5, 100], "min_requests_per_step": 1_000_000,
        "min_step_s": 600, "skip_eval": True, "gates": gates,
    }  # fmt: skip
    started = post(app, f"/v2/models/{RISKY}/rollout", plan)
    assert started["weights"] == {version: 5.0, "1": 95.0}
    return started


def test_a_failing_canary_is_rolled_back_within_two_seconds(app: Server) -> None:
    good = In("input", PIXELS, "FP32")
    broken = PIXELS.copy()
    broken[0, 0] = canaries.BAD_PIXEL
    bad = In("input", broken, "FP32")
    draw = random.Random(0)
    traffic = Traffic(
        app.http_url, app.grpc_url, RISKY, lambda: [bad if draw.random() < BAD_SHARE else good],
        lambda out: None, rate_per_s=LOAD_PER_S,
    )  # fmt: skip
    post(app, f"/v2/models/{RISKY}/traffic", {"weights": {"1": 100}})
    with httpx.Client(timeout=30) as client:  # stable's history: it has served a while
        for _ in range(1_000):
            infer_json(client, app, f"/v2/models/{RISKY}/infer", broken[0])
    with traffic:
        traffic.wait_for(int(LOAD_PER_S))
        assert traffic.tally.failed == 0  # version 1 answers every input
        _risky_rollout(app, "2")
        status = until_status(app, RISKY, "rolled_back", 30)
        traffic.wait_for(int(LOAD_PER_S))
    tally = traffic.tally
    assert tally.first_failure_sent is not None and tally.last_failure_sent is not None
    applied = weight_zero_everywhere(app, tally.first_failure_sent)
    took = applied - tally.first_failure_sent
    print(
        f"failing canary at 5% under {traffic.rate_per_s:.0f} req/s: {took:.3f} s from its "
        f"first failing request (sent) to weight 0 on every replica; {tally.failed} failed, "
        f"answers by version {dict(tally.versions)}; {status['outcome']['reason']}"
    )
    assert took < 2.0
    assert status["outcome"]["reason"].startswith("errors: version 2 failed")
    assert status["weights"] == {"2": 0.0, "1": 100.0}
    assert tally.last_failure_sent < applied and tally.last_sent.get("2", 0.0) < applied
    assert all("'risky' version 2" in failure for failure in tally.failures), tally.failures
    kept = httpx.get(url(app, f"/v2/models/{RISKY}/versions/2/ready"))
    assert kept.status_code == 200  # kept loaded for inspection
    assert httpx.get(url(app, f"/v2/models/{RISKY}/rollout?check=1")).status_code == 503
    metrics = scraped(app)
    canary = (("model", RISKY), ("version", "2"))
    assert metrics[("serving_rollout_rollbacks_total", canary)] == 1
    assert metrics[("serving_traffic_weight", canary)] == 0.0
    assert metrics[("serving_traffic_weight", (("model", RISKY), ("version", "1")))] == 1.0


def test_a_slower_canary_is_rolled_back_within_ten_seconds(app: Server) -> None:
    good = In("input", PIXELS, "FP32")
    traffic = Traffic(
        app.http_url, app.grpc_url, RISKY, [good], lambda out: None, rate_per_s=LOAD_PER_S
    )
    post(app, f"/v2/models/{RISKY}/traffic", {"weights": {"1": 100}})
    with traffic:
        traffic.wait_for(int(LOAD_PER_S))
        # The floor down to 20 ms: these models answer in a few ms, and +50 ms stays under
        # the default floor of 100 ms (the gate: max(100 ms, 1.2 x stable p99)).
        _risky_rollout(app, "3", latency_floor_ms=20)
        status = until_status(app, RISKY, "rolled_back", 60)
        traffic.wait_for(int(LOAD_PER_S))
    tally = traffic.tally
    first = tally.first_sent["3"]
    applied = weight_zero_everywhere(app, first)
    took = applied - first
    canary, stable = status["versions"]["canary"], status["versions"]["stable"]
    print(
        f"slower canary at 5% under {traffic.rate_per_s:.0f} req/s: {took:.3f} s from its "
        f"first request (sent) to weight 0 on every replica; p99 {canary['p99_ms']} ms over "
        f"{canary['requests']} requests against {stable['p99_ms']} ms; "
        f"{status['outcome']['reason']}"
    )
    assert took < 10.0
    assert status["outcome"]["reason"].startswith("latency"), status["outcome"]
    assert tally.failed == 0, tally.failures
    assert tally.last_sent["3"] < applied


def test_a_restarted_controller_resumes_the_rollout(app: Server) -> None:
    plan = {"version": "2", "from": "1", "steps": [25, 50, 100], "min_requests_per_step": 20,
            "min_step_s": 600, "skip_eval": True}  # fmt: skip
    keys = [f"user-{index}" for index in range(24)]

    def routed() -> dict[str, str]:
        with httpx.Client(timeout=30) as client:
            return {
                key: client.post(
                    url(app, "/v2/models/digits/infer"), json=BODY, headers={"x-routing-key": key}
                ).headers["x-model-version"]
                for key in keys
            }

    traffic = Traffic(
        app.http_url, app.grpc_url, "digits", [In("input", PIXELS, "FP32")], lambda out: None,
        rate_per_s=LOAD_PER_S,
    )  # fmt: skip
    with traffic:
        post(app, "/v2/models/digits/rollout", plan)
        before = get(app, "/v2/models/digits/rollout")
        keyed = routed()
        assert set(keyed.values()) == {"1", "2"}
        ray.kill(cluster.controller(app.app), no_restart=False)  # Ray restarts it
        deadline = time.monotonic() + 60
        while True:
            try:
                after = ray.get(cluster.controller(app.app).rollout.remote("digits"), timeout=5)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                assert time.monotonic() < deadline, "the controller did not come back"
                time.sleep(0.2)
        traffic.wait_for(50)
        deadline = time.monotonic() + 30
        while True:  # counting again once the replicas have reported in
            counted = get(app, "/v2/models/digits/rollout")
            if counted["counting"] and counted["versions"]["canary"]["requests"] > 0:
                break
            assert time.monotonic() < deadline, counted
            time.sleep(0.2)
        shown = cli(app, "rollout", "status", "digits")
        print(shown.stdout)
        top = cli(app, "top", "--once", "--interval", "0.3")
        assert routed() == keyed  # the same salt: every key stays where it was
        aborted = post(app, "/v2/models/digits/rollout/abort", {})
    for field in ("status", "step", "current_step", "weights", "salt", "steps"):
        assert after[field] == before[field], field
    assert after["status"] == "running" and after["weights"] == {"2": 25.0, "1": 75.0}
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "RUNNING" in shown.stdout and "v2 25%" in shown.stdout
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in top.stdout.splitlines()]
    traffic_by_version = {row[1]: row[-2] for row in cells if row and row[0] == "digits"}
    assert traffic_by_version == {"1": "75%", "2": "25%"}, top.stdout
    assert aborted["status"] == "aborted" and aborted["weights"] == {"2": 0.0, "1": 100.0}
    assert traffic.tally.failed == 0, traffic.tally.failures


def test_a_healthy_canary_is_promoted_with_zero_failures(app: Server) -> None:
    traffic = Traffic(
        app.http_url, app.grpc_url, "digits", [In("input", PIXELS, "FP32")], lambda out: None
    )
    with traffic:
        traffic.wait_for(20)
        started = cli(app, "rollout", "start", "digits", "2", "--from", "1", "--min-requests",
                      "20", "--min-step-s", "0.5", "--json")  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        status = json.loads(started.stdout)
        assert status["steps"] == ["5%", "25%", "50%", "100%"]
        assert status["weights"] == {"2": 5.0, "1": 95.0}
        evaluation = status["evaluation"]  # the offline gate passed
        assert evaluation["passed"] and not evaluation["skipped"], evaluation
        assert evaluation["canary"]["accuracy"] >= evaluation["stable"]["accuracy"] + 0.02
        deadline = time.monotonic() + 60
        while status["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.25)
            status = httpx.get(url(app, "/v2/models/digits/rollout")).json()
        assert status["status"] == "promoted", status
        events = [entry["event"] for entry in status["history"]]
        assert events == ["started", "advanced", "advanced", "advanced", "promoted"], events
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shown = httpx.get(url(app, "/v2/models/digits/traffic")).json()
            if shown["versions"] == ["2"]:
                break
            time.sleep(0.2)
        assert shown["versions"] == ["2"], shown
        traffic.wait_for(20)
    final = cli(app, "rollout", "status", "digits")
    print(final.stdout)
    assert final.returncode == 0 and "PROMOTED" in final.stdout, final.stdout + final.stderr
    print(f"answered {traffic.tally.answered}, by version {dict(traffic.tally.versions)}")
    assert traffic.tally.failed == 0, traffic.tally.failures
    assert traffic.tally.versions["2"] > 0 and traffic.tally.versions["1"] > 0
