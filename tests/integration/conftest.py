"""One Ray instance per test session; the server application deployed on ports read back."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.cluster_utils import Cluster

from serving.config import ServerConfig
from serving.control import cluster
from serving.transport.servers import reserve_port
from tests.integration.clients import PROTOCOLS, V2Client

READY_TIMEOUT_S = 90.0
HEAD_CPUS = 8
"""Logical CPUs of the session's head node: room for several small test applications on a
2-core machine (the tests size their replicas themselves)."""
MAX_REQUEST_BYTES = 8 * 1024 * 1024


def wait_ready(http_url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{http_url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError as error:
            last = error
        time.sleep(0.2)
    raise TimeoutError(f"server at {http_url} not ready within {timeout_s} s ({last})")


@dataclass
class Server:
    app: str
    repository: Path
    http_url: str
    grpc_url: str
    metrics_url: str


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    """One Ray cluster for the session, on this machine: a head node set up as the embedded Ray
    is (its settings, nice 0), to which a test may add worker nodes and remove them again."""
    cluster.use_embedded_ray_env()  # the nodes' processes inherit it
    local = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": HEAD_CPUS,
            "include_dashboard": False,
            "_system_config": dict(cluster.EMBEDDED_SYSTEM_CONFIG),
        },
    )
    cluster.connect(local.address)
    yield local
    cluster.shutdown()
    local.shutdown()


@pytest.fixture(scope="session")
def ray_serve(ray_cluster: Cluster) -> None:
    """Ray and Serve are up (and stay up for the session)."""


def start_server(
    app: str, repository: Path, *, replicas: int = 1, **options: Any
) -> tuple[Server, list[socket.socket]]:
    """``app`` deployed on held ports; ``options`` are further ``ServerConfig`` fields."""
    held = [reserve_port(), reserve_port(), reserve_port()]
    http_port, grpc_port, metrics_port = (s.getsockname()[1] for s in held)
    config = ServerConfig.model_validate(
        {
            "repository": repository,
            "host": "127.0.0.1",
            "http_port": http_port,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
            "replicas": None if "autoscaling" in options else replicas,
            "replica_cpus": 1.0,
            "max_request_bytes": MAX_REQUEST_BYTES,
            "grpc_max_message_bytes": MAX_REQUEST_BYTES,
            **options,
        }
    )
    cluster.deploy(config, name=app)
    server = Server(
        app,
        repository,
        f"127.0.0.1:{http_port}",
        f"127.0.0.1:{grpc_port}",
        f"127.0.0.1:{metrics_port}",
    )
    if config.tls_cert_file is None:  # deploy has waited for the replicas; this checks HTTP too
        wait_ready(server.http_url)
    return server, held


@contextlib.contextmanager
def running_server(app: str, repository: Path, **options: Any) -> Iterator[Server]:
    """``start_server`` for the length of a ``with`` block: deleted and its ports released
    after."""
    started, held = start_server(app, repository, **options)
    try:
        yield started
    finally:
        cluster.delete(started.app)
        for sock in held:
            sock.close()


@pytest.fixture(scope="session")
def server(ray_serve: None, test_repository: Path) -> Iterator[Server]:
    # On every interface, so that a test can call it from a non-loopback address too.
    started, held = start_server("test", test_repository, host="0.0.0.0")
    yield started
    cluster.delete(started.app)
    for sock in held:
        sock.close()


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, server: Server) -> V2Client:
    """The same test through tritonclient.http, tritonclient.grpc and tritonclient.grpc.aio."""
    return V2Client(request.param, server.http_url, server.grpc_url)
