"""Traffic tables and rollouts on a real application of two replicas, through httpx and
tritonclient."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.errors import ErrorCode
from serving.status import STATUS
from tests.integration.clients import In
from tests.integration.conftest import Server, running_server
from tests.integration.traffic import Traffic

PIXELS = np.full((1, 64), 8.0, dtype=np.float32)
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [8.0] * 64}]}


@pytest.fixture(scope="module")
def app(
    ray_serve: None, demo_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("rollout") / "repo"
    shutil.copytree(demo_repository, repository)
    with running_server("rollout", repository, replicas=2) as started:
        yield started


def url(app: Server, path: str) -> str:
    return f"http://{app.http_url}{path}"


def test_sticky_keys_and_the_version_header(app: Server) -> None:
    set_ = httpx.post(url(app, "/v2/models/digits/traffic"), json={"weights": {"1": 50, "2": 50}})
    assert set_.status_code == 200, set_.text
    assert set_.json()["weights"] == {"2": 50.0, "1": 50.0}
    try:
        seen: dict[str, set[str]] = {}
        with httpx.Client() as client:
            for index in range(40):
                key = f"user-{index % 8}"
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


def test_a_worse_candidate_is_refused_by_the_offline_gate(app: Server) -> None:
    answer = httpx.post(
        url(app, "/v2/models/digits/rollout"), json={"version": "1", "from": "2"}, timeout=30
    )
    assert answer.status_code == STATUS[ErrorCode.CONFLICT].http
    message = answer.json()["error"]
    assert "offline gate" in message and message.count("%") >= 2, message
    assert httpx.get(url(app, "/v2/models/digits/rollout")).status_code == 404


def test_a_healthy_canary_is_promoted_with_zero_failures(app: Server) -> None:
    plan = {
        "version": "2",
        "from": "1",
        "steps": [25, 100],
        "min_requests_per_step": 20,
        "min_step_s": 0.5,
        "skip_eval": True,
    }
    traffic = Traffic(
        app.http_url, app.grpc_url, "digits", [In("input", PIXELS, "FP32")], lambda out: None
    )
    with traffic:
        traffic.wait_for(20)
        started = httpx.post(url(app, "/v2/models/digits/rollout"), json=plan, timeout=30)
        assert started.status_code == 200, started.text
        assert started.json()["weights"] == {"2": 25.0, "1": 75.0}
        deadline = time.monotonic() + 60
        status = started.json()
        while status["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.25)
            status = httpx.get(url(app, "/v2/models/digits/rollout")).json()
        assert status["status"] == "promoted", status
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shown = httpx.get(url(app, "/v2/models/digits/traffic")).json()
            if shown["versions"] == ["2"]:
                break
            time.sleep(0.2)
        assert shown["versions"] == ["2"], shown
        traffic.wait_for(20)
    print(f"answered {traffic.tally.answered}, by version {dict(traffic.tally.versions)}")
    assert traffic.tally.failed == 0, traffic.tally.failures
    assert traffic.tally.versions["2"] > 0 and traffic.tally.versions["1"] > 0
