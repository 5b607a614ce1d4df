"""One Ray instance per test session; the server application deployed on ports read back."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serving import deployment
from serving.config import ServerConfig
from tests.integration.clients import PROTOCOLS, V2Client

READY_TIMEOUT_S = 90.0
MAX_REQUEST_BYTES = 8 * 1024 * 1024


def reserve_port() -> socket.socket:
    """A port held open (bound, not listening) so replicas can share it through SO_REUSEPORT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


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


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[None]:
    deployment.connect(num_cpus=8)
    yield
    deployment.shutdown()


def start_server(
    app: str, repository: Path, *, replicas: int = 1
) -> tuple[Server, list[socket.socket]]:
    held = [reserve_port(), reserve_port()]
    http_port, grpc_port = (s.getsockname()[1] for s in held)
    config = ServerConfig(
        repository=repository,
        host="127.0.0.1",
        http_port=http_port,
        grpc_port=grpc_port,
        replicas=replicas,
        replica_cpus=1.0,
        max_request_bytes=MAX_REQUEST_BYTES,
        grpc_max_message_bytes=MAX_REQUEST_BYTES,
    )
    deployment.deploy(config, name=app)
    server = Server(app, repository, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    wait_ready(server.http_url)
    return server, held


@pytest.fixture(scope="session")
def server(ray_serve: None, test_repository: Path) -> Iterator[Server]:
    started, held = start_server("test", test_repository)
    yield started
    deployment.delete(started.app)
    for sock in held:
        sock.close()


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, server: Server) -> V2Client:
    """The same test through tritonclient.http, tritonclient.grpc and tritonclient.grpc.aio."""
    return V2Client(request.param, server.http_url, server.grpc_url)
