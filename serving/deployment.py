"""The only module that imports Ray: the server deployment and the application around it.

Each replica loads the repository in-process and runs its own HTTP server on the shared port
(SO_REUSEPORT); requests never pass through Ray Serve's proxy. Ray Serve places the replicas,
checks their health, and replaces one that dies.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray import serve
from ray.serve.config import ProxyLocation

from serving.config import ServerConfig
from serving.server import ReplicaServer, normal_priority

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "Server"

REPLICA_ENV = {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}
"""The replica's servers run on the actor's own event loop, where Ray Serve also runs its
internal grpc.aio server. grpc.aio wakes every loop that uses it in a process through one
shared socket and forwards each event to its loop: with the servers on a second loop, half the
wake-ups land on the wrong loop and bounce back (digits over gRPC lost ~20% of its throughput)."""

EMBEDDED_RAY_ENV = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_enable_metrics_collection": "0",
}
"""What an embedded Ray's processes inherit, unless the environment already sets it. On an idle
2-core node Ray's control plane took 0.105 cores, 5% of the machine, taken from the models.
Serve's controller steps its control loop every 0.1 s by default and asks GCS for node
resources at each step: at 0.5 s the controller and GCS cost a third as much, and a deploy takes
~1.4 s longer (health checks run every 5 s anyway). Ray's own metrics are exported every few
seconds from every process through the dashboard agent, which nothing reads when Ray runs
embedded (it has no dashboard); the server's Prometheus metrics do not go through Ray. Together:
0.045 cores idle. A Ray cluster keeps the settings of its own nodes."""


@serve.deployment(
    name=DEPLOYMENT_NAME,
    health_check_period_s=5,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=10,
)
class Server:
    """One server replica."""

    async def __init__(self, config: ServerConfig) -> None:  # type: ignore[misc]  # Serve awaits it
        normal_priority()  # before any thread starts: threads inherit it
        self._server = ReplicaServer(config)
        await self._server.start()
        logger.info(
            "replica serving HTTP on %s:%s, gRPC on %s",
            config.host, self._server.http_port, self._server.grpc_port,
        )  # fmt: skip

    def check_health(self) -> None:
        if not self._server.alive:
            raise RuntimeError("the replica's network servers have stopped")

    def endpoints(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "http_port": self._server.http_port,
            "grpc_port": self._server.grpc_port,
        }

    async def __del__(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            await server.stop()


def build(config: ServerConfig) -> serve.Application:
    return Server.options(  # type: ignore[attr-defined,no-any-return]
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.replica_cpus, "runtime_env": REPLICA_ENV},
    ).bind(config)


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    proxy: tuple[str, int] | None = None,
) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start Ray embedded.

    ``proxy`` (host, port) turns on Ray Serve's own HTTP proxy, for ``deploy_behind_proxy``;
    the serving path does not need it.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            for name, value in EMBEDDED_RAY_ENV.items():
                os.environ.setdefault(name, value)  # Ray's processes inherit the driver's env
            ray.init(
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                logging_level=logging.WARNING,
                # Ray starts workers at nice 15, for batch jobs; a server replica at nice 15
                # loses the CPU to any normal process, its own clients included.
                _system_config={"worker_niceness": 0},
            )
    if proxy is None:
        serve.start(proxy_location=ProxyLocation.Disabled)
    else:
        serve.start(
            proxy_location=ProxyLocation.HeadOnly,
            http_options={"host": proxy[0], "port": proxy[1]},
        )


def deploy(config: ServerConfig, *, name: str = "serving") -> Any:
    """Deploy (or update) the server application; returns once every replica serves."""
    return serve.run(build(config), name=name, route_prefix=None)


def _proxied_app(config: ServerConfig) -> Any:
    """Built on each replica: the same HTTP app, reached through Ray Serve's proxy."""
    from serving.dataplane import DataPlane
    from serving.http import build_app as build_http_app
    from serving.server import load_host

    dataplane = DataPlane(load_host(config))
    return build_http_app(dataplane, max_request_bytes=config.max_request_bytes)


class ProxiedServer:
    """Marker class for the proxied deployment; its routes come from the ASGI builder."""


def deploy_behind_proxy(config: ServerConfig, *, name: str = "serving-proxied") -> Any:
    """The same server behind Ray Serve's HTTP proxy (and its handle hop), for comparison.

    Needs ``connect(proxy=...)``. HTTP only; ``config``'s ports are not used.
    """

    def builder() -> Any:  # Ray Serve calls a plain function to build the app on the replica
        normal_priority()
        return _proxied_app(config)

    ingress = serve.ingress(builder)
    deployment = serve.deployment(name="ProxiedServer")(ingress(ProxiedServer))
    app = deployment.options(
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.replica_cpus},
        # Ray Serve's default (5) makes its router back off and retry under any real
        # concurrency; measured at its best instead.
        max_ongoing_requests=1024,
    ).bind()
    return serve.run(app, name=name, route_prefix="/")


def replica_actor_names(name: str = "serving") -> list[str]:
    """Ray actor names of the application's live replicas (for operations and tests)."""
    prefix = f"SERVE_REPLICA::{name}#{DEPLOYMENT_NAME}#"
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    ]


def delete(name: str = "serving") -> None:
    serve.delete(name)


def shutdown() -> None:
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()
