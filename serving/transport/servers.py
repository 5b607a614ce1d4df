"""A replica's listeners: uvicorn for HTTP and grpc.aio for gRPC, on the replica's event loop.

In a Ray Serve replica that loop is the actor's own, where Ray Serve also runs its internal
grpc.aio server: grpc.aio serves every loop of a process from one poller thread and one wake-up
socket, so a second loop would have to hand half of each other's events across. The sockets are
bound with SO_REUSEPORT so several replicas on one node share the ports and the kernel spreads
connections over them. Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.config import ServerConfig
from serving.dataplane import DataPlane
from serving.observe.node import NodeMetrics
from serving.security.auth import authenticator
from serving.transport.grpc import build_grpc_server
from serving.transport.http import SERVED_BY, build_app

logger = logging.getLogger(__name__)


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other processes may bind to the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reserve_port(host: str = "127.0.0.1") -> socket.socket:
    """A free port, held: bound (not listening) with SO_REUSEPORT, so that servers started
    later can share it while no other process takes it. Close the socket to release it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


MIGRATE_REQUESTS = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def migrate_queued_connections() -> None:
    """Ask the kernel (Linux 5.14+) to hand the connections queued on a closing SO_REUSEPORT
    listener to its siblings instead of resetting them, so that a replica that stops does not
    drop the connections that arrived just before it closed its socket. Needs the right to
    write the setting (root in the network namespace); without it, carries on."""
    try:
        if MIGRATE_REQUESTS.read_text().strip() == "0":
            MIGRATE_REQUESTS.write_text("1")
            logger.info("net.ipv4.tcp_migrate_req set to 1: queued connections move to a sibling")
    except OSError as error:
        logger.debug("net.ipv4.tcp_migrate_req left as it is: %s", error)


class _Draining:
    """The HTTP app, saying ``Connection: close`` on every answer once the replica drains, so
    that keep-alive clients take their next request to a new connection (another replica)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.on = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.on or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, closing)


class Listeners:
    """A replica's HTTP and gRPC servers over one dataplane, on the caller's event loop."""

    def __init__(
        self,
        config: ServerConfig,
        dataplane: DataPlane,
        *,
        served_by: str | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.config = config
        self.dataplane = dataplane
        self.auth = authenticator(config.auth_file, config.auth_tokens)
        self._served_by = served_by
        self._metrics = metrics
        self._uvicorn: uvicorn.Server | None = None
        self._draining: _Draining | None = None
        self._grpc: Any = None
        self._grpc_stopping: asyncio.Task[None] | None = None
        self._metrics_server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None

    def _prepare(self) -> list[socket.socket]:
        http_socket = shared_socket(self.config.host, self.config.http_port)
        self.http_port = http_socket.getsockname()[1]
        app = build_app(
            self.dataplane,
            max_request_bytes=self.config.max_request_bytes,
            served_by=self._served_by,
            auth=self.auth,
            limits=self.config.input_limits(),
        )
        self._draining = _Draining(app)
        self._uvicorn = _server(self._draining, self.config)
        sockets = [http_socket]
        if self._metrics is not None and self.config.metrics_port is not None:
            metrics_socket = shared_socket(self.config.host, self.config.metrics_port)
            self.metrics_port = metrics_socket.getsockname()[1]
            app = build_metrics_app(self._metrics, served_by=self._served_by)
            self._metrics_server = _server(app)
            sockets.append(metrics_socket)
        return sockets

    async def start(self, timeout_s: float = 30.0) -> None:
        """Serve on the running loop; returns once both servers listen."""
        migrate_queued_connections()
        self._task = asyncio.create_task(self._serve(*self._prepare()))
        self._task.add_done_callback(_log_failure)
        started = asyncio.create_task(self._started.wait())
        done, _ = await asyncio.wait(
            {started, self._task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not self._started.is_set():
            started.cancel()
            if self._task in done:
                raise RuntimeError("servers failed to start") from self._task.exception()
            raise TimeoutError(f"servers did not start within {timeout_s} s")

    async def drain(self, deregister_s: float, timeout_s: float, within_s: float) -> None:
        """Move clients off this replica before it stops (the caller has made it answer
        not-ready). First, for ``deregister_s``, it keeps accepting (a load balancer or a
        Kubernetes Service may still send new connections its way until its readiness check
        fails) while every HTTP answer says ``Connection: close``. Then its listening sockets
        close (new connections go to the node's other replicas), gRPC sends GOAWAY (channels
        reconnect, and calls the server did not take are retried by the client), and it
        returns once no HTTP connection is left, or after ``timeout_s`` (connections whose
        clients send nothing more). gRPC calls in progress may finish until ``within_s``
        after the drain began."""
        if self._uvicorn is None or self._draining is None:
            return
        self._draining.on = True
        await asyncio.sleep(deregister_s)
        for server in getattr(self._uvicorn, "servers", []):
            server.close()
        if self._grpc is not None:
            grace = max(1.0, within_s - deregister_s - 1.0)
            self._grpc_stopping = asyncio.create_task(self._grpc.stop(grace=grace))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._uvicorn.server_state.connections:
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting; requests in progress are answered first (at most ``timeout_s``)."""
        for server in (self._uvicorn, self._metrics_server):
            if server is not None:
                server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout_s)

    async def _serve(
        self, http_socket: socket.socket, metrics_socket: socket.socket | None = None
    ) -> None:
        assert self._uvicorn is not None
        grpc_server = None
        if self.config.grpc_port is not None:
            grpc_server = build_grpc_server(
                self.dataplane,
                max_message_bytes=self.config.grpc_max_message_bytes,
                auth=self.auth,
                limits=self.config.input_limits(),
            )
            address = _address(self.config.host, self.config.grpc_port)
            credentials = grpc_credentials(self.config)
            if credentials is None:
                self.grpc_port = grpc_server.add_insecure_port(address)
            else:
                self.grpc_port = grpc_server.add_secure_port(address, credentials)
            await grpc_server.start()
            self._grpc = grpc_server
        task = asyncio.create_task(self._uvicorn.serve(sockets=[http_socket]))
        metrics = self._metrics_server
        metrics_task = None
        if metrics is not None and metrics_socket is not None:
            metrics_task = asyncio.create_task(metrics.serve(sockets=[metrics_socket]))
        while not task.done() and not (
            self._uvicorn.started and (metrics is None or metrics.started)
        ):
            await asyncio.sleep(0.01)
        self._started.set()
        try:
            await task
        finally:
            if metrics_task is not None:
                assert metrics is not None
                metrics.should_exit = True
                with contextlib.suppress(Exception):
                    await metrics_task
            if grpc_server is not None:
                if self._grpc_stopping is not None:
                    await self._grpc_stopping
                else:
                    await grpc_server.stop(grace=2.0)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()


def _server(app: Any, tls: ServerConfig | None = None) -> uvicorn.Server:
    """A uvicorn server for ``app``; speaking TLS when ``tls`` (the server config) has a
    certificate, and asking clients for theirs when it has a client CA."""
    options: dict[str, Any] = {}
    if tls is not None and tls.tls_cert_file is not None:
        options = {
            "ssl_certfile": str(tls.tls_cert_file),
            "ssl_keyfile": str(tls.tls_key_file),
        }
        if tls.tls_client_ca_file is not None:
            options["ssl_ca_certs"] = str(tls.tls_client_ca_file)
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_keep_alive=30,
            backlog=2048,
            **options,
        )
    )
    if options:
        server.config.load()  # reads the files now: a bad certificate fails the start, here
    return server


def grpc_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The gRPC listener's TLS credentials (None: plaintext), from the same files as HTTP's."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    client_ca = config.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())],
        root_certificates=None if client_ca is None else client_ca.read_bytes(),
        require_client_auth=client_ca is not None,
    )


def build_metrics_app(metrics: NodeMetrics, *, served_by: str | None = None) -> Starlette:
    """``GET /metrics``: the node's Prometheus exposition (``Served-By`` says which replica
    answered it)."""
    headers = {SERVED_BY: served_by} if served_by else {}

    async def exposition(request: Request) -> Response:
        text = await metrics.render()
        return Response(text, media_type=CONTENT_TYPE_LATEST, headers=headers)

    return Starlette(routes=[Route("/metrics", exposition)])


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("replica servers stopped with an error", exc_info=task.exception())
