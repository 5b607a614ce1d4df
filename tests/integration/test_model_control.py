"""Model control on two live replicas, through the clients users use: Triton's load / unload /
index / ready, statistics for the whole application, changes under load that fail no request,
KServe's SDK, KubeRay's probe, and a controller that is killed and comes back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import yaml
from tritonclient.utils import InferenceServerException

from serving.control import cluster
from serving.errors import ErrorCode
from tests.integration.clients import PROTOCOLS, In, V2Client, error_code
from tests.integration.conftest import Server, running_server
from tests.integration.traffic import Traffic

ROW = np.ones((1, 16), dtype=np.float32)
ADD_SUB = [In("INPUT0", ROW, "FP32"), In("INPUT1", ROW, "FP32")]


@pytest.fixture(scope="module")
def repository(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of the module's own, which its tests change: digits starts with version 1."""
    repo = tmp_path_factory.mktemp("control") / "repo"
    repo.mkdir()
    for name in ("add_sub", "identity_fp32"):
        shutil.copytree(demo_repository / name, repo / name)
    shutil.copytree(demo_repository / "digits", repo / "digits", ignore=lambda d, n: ["2"])
    return repo


@pytest.fixture(scope="module")
def two(ray_serve: None, repository: Path) -> Iterator[Server]:
    with running_server("control", repository, replicas=2) as server:
        yield server


def fresh_infer(server: Server, model: str = "add_sub") -> httpx.Response:
    """One JSON request on a new connection: SO_REUSEPORT may hand it to either replica."""
    body = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as client:
        return client.post(f"/v2/models/{model}/infer", json=body)


def replicas_answering(server: Server, attempts: int = 60) -> set[str]:
    """Which replicas answer fresh connections (their ``Served-By`` header)."""
    seen = set()
    for _ in range(attempts):
        response = fresh_infer(server)
        assert response.status_code == 200, response.text
        seen.add(response.headers["Served-By"])
        if len(seen) == 2:
            break
    return seen


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_unload_index_and_ready_behave_as_against_triton(two: Server, protocol: str) -> None:
    client = V2Client(protocol, two.http_url, two.grpc_url)
    rows = {(r["name"], r.get("version")): r for r in client.repository_index()}
    assert rows[("add_sub", "1")]["state"] == "READY"

    client.unload_model("add_sub")
    assert not client.is_model_ready("add_sub")
    rows = {(r["name"], r.get("version")): r for r in client.repository_index()}
    assert rows[("add_sub", "1")] == {
        "name": "add_sub", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"
    }  # fmt: skip
    for _ in range(10):  # neither replica serves it any more
        assert fresh_infer(two).status_code == 404
    client.unload_model("add_sub")  # unloading what is not loaded is fine, as in Triton

    client.load_model("add_sub")
    assert client.is_model_ready("add_sub")
    assert len(replicas_answering(two)) == 2  # both replicas serve it again

    with pytest.raises(InferenceServerException) as unknown:
        client.load_model("no_such_model")
    assert error_code(unknown.value) is ErrorCode.NOT_FOUND
    assert "unknown model 'no_such_model'" in unknown.value.message()


def test_a_config_override_reaches_every_replica(two: Server) -> None:
    client = V2Client("grpc", two.http_url, two.grpc_url)
    override = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 500}}
    client.load_model("identity_fp32", config=json.dumps(override))
    try:
        for _ in range(12):  # fresh HTTP connections: every replica's config carries it
            with httpx.Client(base_url=f"http://{two.http_url}") as http:
                config = http.get("/v2/models/identity_fp32/config").json()
            assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
            assert config["dynamic_batching"]["preferred_batch_size"] == [8]
    finally:
        client.load_model("identity_fp32", config=json.dumps({"max_batch_size": 8}))


def test_statistics_answer_for_the_whole_application_every_time(two: Server) -> None:
    reader = V2Client("http", two.http_url, two.grpc_url)

    def successes(client: V2Client) -> int:
        (stats,) = client.statistics("add_sub", "1")
        return int(stats["inference_stats"]["success"].get("count", 0))

    before = successes(reader)
    served_by = set()
    requests = 40
    for _ in range(requests):
        response = fresh_infer(two)
        assert response.status_code == 200
        served_by.add(response.headers["Served-By"])
    assert len(served_by) == 2  # both replicas took part
    readings = []
    for index in range(10):  # fresh clients over both protocols: any replica answers
        protocol = PROTOCOLS[index % len(PROTOCOLS)]
        readings.append(successes(V2Client(protocol, two.http_url, two.grpc_url)) - before)
    print(f"statistics read 10 times after {requests} requests: {readings}")
    assert readings == [requests] * 10


def digits_rows(server: Server) -> np.ndarray:
    return np.load(server.repository / "digits" / "evaluation.npz")["inputs"][:1].astype(np.float32)


def test_changes_under_load_fail_no_request(two: Server, demo_repository: Path) -> None:
    """A new version, a changed model file, a batching change, an old version unloaded: each
    applied to both replicas while requests keep coming, and not one fails."""
    repo = two.repository
    digits = repo / "digits"
    control = V2Client("http", two.http_url, two.grpc_url)
    config = yaml.safe_load((digits / "config.yaml").read_text())

    def check(outputs: dict[str, np.ndarray]) -> None:
        assert outputs["probabilities"].shape == (1, 10)
        assert 0 <= int(outputs["label"][0]) <= 9

    steps: list[tuple[str, int]] = []
    with Traffic(two.http_url, two.grpc_url, "digits", [In("input", digits_rows(two), "FP32")],
                 check) as traffic:  # fmt: skip
        traffic.wait_for(50)
        shutil.copytree(demo_repository / "digits" / "2", digits / "2")
        control.load_model("digits")  # version 2 loads and becomes the default
        traffic.wait_for(50)
        steps.append(("new version 2", traffic.tally.failed))

        (digits / "2" / "model.onnx").write_bytes((digits / "1" / "model.onnx").read_bytes())
        control.load_model("digits")  # version 2's file changed: reloaded, swapped, drained
        traffic.wait_for(50)
        steps.append(("reloaded a changed model.onnx", traffic.tally.failed))

        config["dynamic_batching"] = {"max_queue_delay_ms": 1, "preferred_batch_sizes": [4]}
        (digits / "config.yaml").write_text(yaml.safe_dump(config))
        control.load_model("digits")  # the same sessions under a new scheduler
        traffic.wait_for(50)
        steps.append(("batching config changed", traffic.tally.failed))

        config["version_policy"] = {"latest": 1}
        (digits / "config.yaml").write_text(yaml.safe_dump(config))
        control.load_model("digits")  # version 1 unloaded
        traffic.wait_for(50)
        steps.append(("old version 1 unloaded", traffic.tally.failed))
    tally = traffic.tally
    print(f"answered {tally.answered} requests, by version {dict(tally.versions)}; failed "
          f"{tally.failed} {dict(tally.failures)}; failures after each step: {steps}")  # fmt: skip
    assert tally.failed == 0, tally.failures
    assert tally.versions["1"] > 0 and tally.versions["2"] > 0
    assert control.model_metadata("digits")["versions"] == ["2"]
    assert control.model_config("digits")["dynamic_batching"]["preferred_batch_size"] == [4]


def test_a_failed_load_keeps_the_previous_model_serving(two: Server) -> None:
    model_file = two.repository / "add_sub" / "1" / "model.onnx"
    good = model_file.read_bytes()
    client = V2Client("grpc", two.http_url, two.grpc_url)
    model_file.write_bytes(b"not an onnx model any more")
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("add_sub")
        assert error_code(caught.value) is ErrorCode.INVALID_ARGUMENT
        message = caught.value.message()
        assert "load failed for model 'add_sub': version 1: cannot load add_sub/1/model.onnx" in (
            message
        )
        assert "what was served before keeps serving" in message
        assert client.is_model_ready("add_sub")
        for _ in range(10):
            assert fresh_infer(two).status_code == 200
    finally:
        model_file.write_bytes(good)
    client.load_model("add_sub")


def test_kserve_sdk_health_and_ready_calls_return_true(two: Server) -> None:
    """KServe's Python SDK parses the health bodies. It registers the same protobuf names as
    tritonclient in the default pool, so it runs in a process of its own."""
    script = """
import asyncio, json, sys
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig

async def main(http_url, grpc_url):
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    grpc = InferenceGRPCClient(grpc_url, timeout=30)
    base = "http://" + http_url
    answers = {
        "rest_live": await rest.is_server_live(base),
        "rest_ready": await rest.is_server_ready(base),
        "rest_model_ready": await rest.is_model_ready(base, "add_sub"),
        "grpc_live": await grpc.is_server_live(),
        "grpc_ready": await grpc.is_server_ready(),
        "grpc_model_ready": await grpc.is_model_ready("add_sub"),
    }
    await rest.close()
    await grpc.close()
    print(json.dumps(answers))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, two.http_url, two.grpc_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers == dict.fromkeys(answers, True) and len(answers) == 6


def test_kuberay_probe_says_success(two: Server) -> None:
    for _ in range(6):
        with httpx.Client(base_url=f"http://{two.http_url}") as client:
            probe = client.get("/-/healthz")
        assert probe.status_code == 200 and "success" in probe.text


def test_a_replaced_replica_starts_on_the_current_revision(two: Server) -> None:
    """A replica Ray Serve starts in place of a dead one serves what model control set, not what
    the repository says, before it answers."""
    client = V2Client("http", two.http_url, two.grpc_url)
    client.unload_model("identity_fp32")
    try:
        victim = cluster.replica_actor_names(two.app)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 120
        while True:
            names = cluster.replica_actor_names(two.app)
            if len(names) == 2 and victim not in names:
                break
            assert time.monotonic() < deadline, "the replica was not replaced"
            time.sleep(0.5)
        answering = replicas_answering(two, attempts=200)
        assert len(answering) == 2, answering
        body = {"inputs": [{"name": "INPUT", "shape": [1, 2], "datatype": "FP32",
                            "data": [1.0, 2.0]}]}  # fmt: skip
        for _ in range(20):  # neither the survivor nor the replacement serves it
            with httpx.Client(base_url=f"http://{two.http_url}") as http:
                assert http.post("/v2/models/identity_fp32/infer", json=body).status_code == 404
    finally:
        client.load_model("identity_fp32")


def test_a_killed_controller_comes_back_with_its_state(two: Server) -> None:
    client = V2Client("http", two.http_url, two.grpc_url)
    client.unload_model("identity_fp32")
    handle = cluster.controller(two.app)
    before = ray.get(handle.current.remote())
    with Traffic(two.http_url, two.grpc_url, "add_sub", ADD_SUB, lambda outputs: None) as traffic:
        traffic.wait_for(20)
        ray.kill(handle, no_restart=False)  # Ray restarts it; it resumes from GCS
        deadline = time.monotonic() + 60
        while True:
            try:
                after = ray.get(cluster.controller(two.app).current.remote(), timeout=5)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                assert time.monotonic() < deadline, "the controller did not come back"
                time.sleep(0.2)
        traffic.wait_for(20)  # the replicas served on while it was away
        assert after == before
        rows = {(r["name"], r.get("version")): r for r in client.repository_index()}
        assert rows[("identity_fp32", "1")]["reason"] == "unloaded"
        client.load_model("identity_fp32")  # and it takes changes again
        assert client.is_model_ready("identity_fp32")
        traffic.wait_for(20)
    print(f"while the controller restarted: {traffic.tally}")
    assert traffic.tally.failed == 0, traffic.tally.failures
