"""The one way a benchmark starts a server: on held ports, as an application on the embedded
Ray (``embedded_ray`` + ``deployed``) or as the ``serving serve`` command a user runs
(``command_line``), optionally from another source tree (a commit measured beside today's)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serving.transport.servers import reserve_port

READY_TIMEOUT_S = 300.0


@dataclass
class Endpoint:
    """A running server: where it answers, and what it said when it started."""

    http: str
    grpc: str
    pid: int | None = None
    """The ``serving serve`` process, when it is one."""
    banner: list[str] = field(default_factory=list)
    deployed: Any = None
    """The config as deployed (sized), for an application deployed here."""
    metrics: str | None = None
    """Where ``/metrics`` answers, when it is on."""

    @property
    def urls(self) -> dict[str, str]:
        return {"http": self.http, "grpc": self.grpc}


@contextlib.contextmanager
def held_ports(count: int) -> Iterator[list[int]]:
    """``count`` free ports, held (bound with SO_REUSEPORT, not listening) until the block ends,
    so that no other process takes one between choosing it and a server binding it."""
    sockets: list[socket.socket] = [reserve_port() for _ in range(count)]
    try:
        yield [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def embedded_ray(*, num_cpus: int | None = None, proxy_port: int | None = None) -> Iterator[None]:
    """A fresh embedded Ray (with Ray Serve's HTTP proxy on ``proxy_port`` if given)."""
    from serving.control import cluster

    proxy = None if proxy_port is None else ("127.0.0.1", proxy_port)
    cluster.connect(num_cpus=num_cpus, proxy=proxy)
    try:
        yield
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def deployed(repository: Path, name: str, **options: Any) -> Iterator[Endpoint]:
    """The server application ``name`` on the running Ray, on held ports; ``options`` are
    ``ServerConfig`` fields (left out: sized to the machine, as ``serving serve`` does)."""
    from serving.config import ServerConfig
    from serving.control import cluster

    with held_ports(3) as (http_port, grpc_port, metrics_port):
        config = ServerConfig(
            repository=repository,
            host="127.0.0.1",
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=options.pop("metrics_port", metrics_port),
            **options,
        )
        config, _ = cluster.deploy(config, name=name)
        endpoint = Endpoint(
            f"127.0.0.1:{http_port}",
            f"127.0.0.1:{grpc_port}",
            deployed=config,
            metrics=f"127.0.0.1:{metrics_port}",
        )
        try:
            yield endpoint
        finally:
            cluster.delete(name)


def wait_ready(http: str, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"serving serve exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{http}/v2/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"server at {http} not ready within {READY_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def command_line(
    repository: Path | None = None,
    *,
    arguments: tuple[str, ...] = (),
    source: Path | None = None,
    state_dir: Path | None = None,
) -> Iterator[Endpoint]:
    """``serving serve [REPOSITORY]`` with only ports (held) and ``arguments`` added, as a user
    runs it, with its own embedded Ray; stopped with Ctrl-C at the end. ``source``: run the
    ``serving`` package of that source tree instead of this one."""
    with held_ports(3) as (http_port, grpc_port, metrics_port):
        command = [sys.executable, "-m", "serving.cli", "serve"]
        command += [str(repository)] if repository is not None else []
        command += ["--host", "127.0.0.1", "--http-port", str(http_port)]
        command += ["--grpc-port", str(grpc_port)]
        if source is None:  # an older tree may not have the flag (nor the metrics port)
            command += ["--metrics-port", str(metrics_port)]
        command += arguments
        env = dict(os.environ, RAY_ADDRESS="", COLUMNS="200")
        if source is not None:
            env["PYTHONPATH"] = str(source)
        if state_dir is not None:
            env["XDG_STATE_HOME"] = str(state_dir)  # a saved model control state of its own
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=source or None,
            start_new_session=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
        reader.start()
        endpoint = Endpoint(
            f"127.0.0.1:{http_port}",
            f"127.0.0.1:{grpc_port}",
            process.pid,
            banner=lines,
            metrics=f"127.0.0.1:{metrics_port}" if source is None else None,
        )
        try:
            wait_ready(endpoint.http, process)
            yield endpoint
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            reader.join(5)
