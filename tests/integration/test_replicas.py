"""Replicas share the port, and a killed replica is replaced while the others keep answering."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import orjson
import pytest
import ray
from ray import serve

from serving.control import cluster
from tests.integration.conftest import start_server

REPLACE_TIMEOUT_S = 120.0
BODY = orjson.dumps({
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [2.0] * 16},
    ]
})  # fmt: skip


def infer_fresh_connection(url: str) -> httpx.Response:
    """One request on a new connection, so SO_REUSEPORT may route it to any replica."""
    with httpx.Client(base_url=f"http://{url}", timeout=10) as client:
        return client.post("/v2/models/add_sub/infer", content=BODY)


@pytest.fixture
def two_replicas(ray_serve: None, demo_repository: Path):  # type: ignore[no-untyped-def]
    server, held = start_server("replicas", demo_repository, replicas=2)
    yield server
    cluster.delete(server.app)
    for sock in held:
        sock.close()


def test_killed_replica_is_replaced_and_serving_continues(two_replicas) -> None:  # type: ignore[no-untyped-def]
    url = two_replicas.http_url
    names = cluster.replica_actor_names(two_replicas.app)
    assert len(names) == 2
    victim = names[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    answered = 0
    deadline = time.monotonic() + REPLACE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            response = infer_fresh_connection(url)
        except httpx.TransportError:
            # A connection already queued on the dying socket may be reset; a retry lands on
            # the surviving replica.
            response = infer_fresh_connection(url)
        assert response.status_code == 200
        answered += 1
        current = cluster.replica_actor_names(two_replicas.app)
        if len(current) == 2 and victim not in current:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"replica {victim} was not replaced within {REPLACE_TIMEOUT_S} s")
    assert answered > 0
    # The replacement serves on the same shared port.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = {infer_fresh_connection(url).status_code for _ in range(10)}
        if statuses == {200}:
            break
    assert statuses == {200}


def thread_niceness(pid: int) -> list[int]:
    """The nice value of each thread of ``pid`` (Linux keeps one per thread)."""
    values = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        values.append(int(stat.rsplit(")", 1)[1].split()[16]))  # field 19 of stat: nice
    return values


def test_replica_serves_at_normal_priority(two_replicas) -> None:  # type: ignore[no-untyped-def]
    """Ray starts workers at nice 15, which lets any busy process (a client on the same node
    included) starve a replica; every thread of a replica under the embedded Ray runs at 0."""
    handle = serve.get_app_handle(two_replicas.app)
    pid = handle.endpoints.remote().result(timeout_s=30)["pid"]
    niceness = thread_niceness(pid)
    assert len(niceness) > 3  # the serving loop, gRPC and ONNX Runtime threads are there
    assert set(niceness) == {0}, niceness


def test_replica_inherits_the_lean_control_plane_settings(two_replicas) -> None:  # type: ignore[no-untyped-def]
    """Ray's worker processes (Serve's controller and the replicas) run with the settings the
    embedded Ray starts with (a 0.5 s control loop and Ray's own metrics export off, unless the
    environment said otherwise: tests/unit/test_connect.py)."""
    handle = serve.get_app_handle(two_replicas.app)
    pid = handle.endpoints.remote().result(timeout_s=30)["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    environ = dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)
    for name in cluster.EMBEDDED_RAY_ENV:
        assert environ.get(name) == os.environ[name], name
