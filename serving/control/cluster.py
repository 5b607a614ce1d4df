"""The Ray side of a deployment: the replica deployment, sizing to the cluster, connecting to
Ray (or starting it embedded), deploying and deleting the application.

Each replica serves HTTP and gRPC itself on the node's shared ports (SO_REUSEPORT); requests
never pass through Ray Serve's proxy. Ray Serve places the replicas, checks their health and
replaces one that dies; the application's controller (``actor.py``) keeps them on one revision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, cast

import pydantic
import ray
from ray import serve
from ray.serve.config import ProxyLocation

from serving.config import MAX_CPUS_PER_REPLICA, ServerConfig, describe_errors
from serving.control.actor import RayChannel, controller_for, existing_controller, forget
from serving.control.autoscaling import IN_FLIGHT, serve_autoscaling_config
from serving.control.controller import ControlSettings
from serving.models.spec import DesiredState
from serving.replica import Replica, normal_priority

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "Replica"

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
embedded (it has no dashboard). Together: 0.045 cores idle. A Ray cluster keeps the settings of
its own nodes."""

EMBEDDED_RAY_SURFACE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
"""An embedded Ray is one machine's: nothing of it need be reachable from another host, and on
a Ray reachable from elsewhere anyone can run code (its job API runs shell commands). Ray's
single-machine mode (what it uses on macOS and Windows) makes it take 127.0.0.1 as the node's
address, and then GCS, raylet, workers, the dashboard agent and the runtime-env agent listen on
loopback only; token authentication (with a fresh random token per start, which Ray's processes
inherit) keeps the machine's other users out too."""


def embedded_ray_env() -> dict[str, str]:
    """What an embedded Ray's processes inherit: ``EMBEDDED_RAY_ENV``, ``EMBEDDED_RAY_SURFACE``
    and a new ``RAY_AUTH_TOKEN``. A variable the environment already sets wins."""
    return {**EMBEDDED_RAY_ENV, **EMBEDDED_RAY_SURFACE, "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def use_embedded_ray_env() -> None:
    """Put ``embedded_ray_env()`` in this process's environment (what is set already wins),
    for the Ray this process starts; Ray's processes inherit it. Ray reads its authentication
    settings once, on first use, and its single-machine mode when imported, so both are read
    again here."""
    for name, value in embedded_ray_env().items():
        os.environ.setdefault(name, value)
    from ray._private import ray_constants

    single = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR) == "0"
    ray_constants.ENABLE_RAY_CLUSTER = not single
    try:
        from ray._raylet import (  # type: ignore[attr-defined]
            AuthenticationTokenLoader,
            Config,
        )
    except ImportError:  # a Ray without token authentication: nothing cached
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


EMBEDDED_SYSTEM_CONFIG = {"worker_niceness": 0}
"""Ray starts workers at nice 15, for batch jobs; a server replica at nice 15 loses the CPU to
any normal process, its own clients included."""


def control_settings(config: ServerConfig) -> ControlSettings:
    return ControlSettings(
        repository=config.repository,
        mode=config.model_control_mode,
        load_models=config.load_models,
        poll_s=config.repository_poll_s,
        resume=config.resume,
        drift=config.drift_settings(),
    )


def _inter_deployment_server_on_loopback() -> None:
    """On a single-machine Ray, bind the gRPC server that Ray Serve starts in each replica
    (after the deployment's constructor) for calls between deployments to loopback: Serve 2.60
    binds it to every interface (``[::]:0``, written in ``serve/_private/replica.py``) whatever
    the node's address. It takes Ray's token when token authentication is on; this server makes
    no such calls, and on one machine nothing else needs it from another host."""
    from ray.serve._private import replica as serve_replica

    bind = getattr(serve_replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback", False):
        return

    def loopback(server: Any, address: str) -> int:
        return int(bind(server, "127.0.0.1:0" if address == "[::]:0" else address))

    loopback.loopback = True  # type: ignore[attr-defined]
    setattr(serve_replica, "add_port_to_grpc_server", loopback)  # noqa: B010


@serve.deployment(
    name=DEPLOYMENT_NAME,
    health_check_period_s=5,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
class ReplicaDeployment:
    """One server replica, as a Ray Serve deployment."""

    async def __init__(self, config: ServerConfig) -> None:  # type: ignore[misc]  # Serve awaits it
        normal_priority()  # before any thread starts: threads inherit it
        if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
            _inter_deployment_server_on_loopback()
        context = serve.get_replica_context()
        settings = control_settings(config)
        handle = controller_for(context.app_name, settings, config.state_file)
        # Deployed from a config file, nothing else has told the controller these settings.
        state_file = None if config.state_file is None else str(config.state_file)
        await handle.configure.remote(settings, state_file)
        self._node: str = ray.get_runtime_context().get_node_id()
        self._replica: Replica = Replica(
            config,
            RayChannel(handle),
            replica=context.replica_id.unique_id,
            node=self._node[:12],
        )
        await self._replica.start()
        listeners = self._replica.listeners
        logger.info(
            "replica serving HTTP on %s:%s, gRPC on %s",
            config.host, listeners.http_port, listeners.grpc_port,
        )  # fmt: skip

    def check_health(self) -> None:
        if not self._replica.alive:
            raise RuntimeError("the replica's servers or its control loop have stopped")

    def record_autoscaling_stats(self) -> dict[str, float]:
        """The load Ray Serve's autoscaler scales on (``autoscaling.py``): requests inside
        this replica's model versions, queued or running."""
        return {IN_FLIGHT: float(self._replica.in_flight())}

    def endpoints(self) -> dict[str, Any]:
        listeners = self._replica.listeners
        return {
            "pid": os.getpid(),
            "node": self._node,
            "http_port": listeners.http_port,
            "grpc_port": listeners.grpc_port,
            "metrics_port": listeners.metrics_port,
        }

    async def __del__(self) -> None:
        replica = getattr(self, "_replica", None)
        if replica is not None:
            await replica.stop()


@dataclass(frozen=True)
class Sizing:
    """What the deployment asks Ray for, and why."""

    replicas: int
    replica_cpus: float
    node_cpus: tuple[float, ...]
    sized: bool
    """Whether any of it was chosen here rather than given."""
    autoscaling: str = ""
    replica_gpus: float = 0.0

    def describe(self) -> str:
        nodes = ", ".join(f"{c:g}" for c in self.node_cpus) or "none"
        chosen = "sized to the cluster" if self.sized else "as configured"
        count = self.autoscaling or f"{self.replicas} replica(s)"
        gpus = f" and {self.replica_gpus:g} GPU(s)" if self.replica_gpus else ""
        return (f"{count} of {self.replica_cpus:g} CPUs{gpus} ({chosen}; CPUs of the Ray "
                f"node(s): {nodes})")  # fmt: skip


def _node_cpus(config: ServerConfig) -> list[float]:
    """The CPUs of every live node that can hold a replica (with the custom resources asked)."""
    cpus = []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        resources = node.get("Resources", {})
        if not node.get("Alive") or resources.get("CPU", 0) < 1:
            continue
        if all(resources.get(k, 0) >= v for k, v in config.replica_resources.items()):
            cpus.append(float(resources["CPU"]))
    return sorted(cpus, reverse=True)


def _cluster_gpus(config: ServerConfig) -> float:
    """GPUs of the live nodes that can hold a replica."""
    total = 0.0
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        resources = node.get("Resources", {})
        if node.get("Alive") and all(
            resources.get(k, 0) >= v for k, v in config.replica_resources.items()
        ):
            total += float(resources.get("GPU", 0))
    return total


def gpu_share(config: ServerConfig, cluster_gpus: float) -> tuple[float, int | None]:
    """GPUs per replica, and the replica count the GPUs make (None: leave it to the CPUs):
    as configured, else one GPU per replica and one replica per GPU where there are GPUs."""
    share = config.replica_gpus
    if share is None:
        share = 1.0 if cluster_gpus >= 1 else 0.0
    if share == 0 or config.replicas is not None:
        return share, None
    return share, max(1, int(cluster_gpus // share + 1e-9))


def size(config: ServerConfig, node_cpus: list[float]) -> Sizing:
    """Replicas and CPUs per replica for ``node_cpus``: what ``config`` leaves out follows from
    the nodes. A node gets one replica per ``MAX_CPUS_PER_REPLICA`` of its CPUs, sharing them
    evenly; given a replica count, the largest per-replica share that fits that many."""
    sized = config.replicas is None or config.replica_cpus is None
    if not node_cpus:
        node_cpus = [float(os.cpu_count() or 1)]

    def fits(share: float) -> int:
        return sum(int(c // share + 1e-9) for c in node_cpus)

    replica_cpus = config.replica_cpus
    if replica_cpus is None:
        if config.replicas is None:
            replica_cpus = min(c / math.ceil(c / MAX_CPUS_PER_REPLICA) for c in node_cpus)
        else:
            candidates = {c / k for c in node_cpus for k in range(1, config.replicas + 1)}
            fitting = [s for s in candidates if fits(s) >= config.replicas]
            replica_cpus = max(fitting, default=1.0)
    replicas = config.replicas or max(1, fits(replica_cpus))
    return Sizing(replicas, replica_cpus, tuple(node_cpus), sized)


def build(config: ServerConfig) -> serve.Application:
    assert config.replica_cpus is not None
    actor_options: dict[str, Any] = {"num_cpus": config.replica_cpus, "runtime_env": REPLICA_ENV}
    if config.replica_gpus:
        actor_options["num_gpus"] = config.replica_gpus  # Ray sets CUDA_VISIBLE_DEVICES
    if config.replica_resources:
        actor_options["resources"] = dict(config.replica_resources)
    count: dict[str, Any]
    if config.autoscaling is not None:
        count = {"autoscaling_config": serve_autoscaling_config(config.autoscaling)}
    else:
        assert config.replicas is not None
        count = {"num_replicas": config.replicas}
    return ReplicaDeployment.options(  # type: ignore[attr-defined,no-any-return]
        ray_actor_options=actor_options, **count
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
            use_embedded_ray_env()
            ray.init(
                # "local": a Ray of our own, even where one started by `ray start` (or a
                # test's cluster) runs on this machine and plain ray.init() would join it.
                address="local",
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                logging_level=logging.WARNING,
                _system_config=dict(EMBEDDED_SYSTEM_CONFIG),  # Ray adds to the dict it is given
            )
    if proxy is None:
        serve.start(proxy_location=ProxyLocation.Disabled)
    else:
        serve.start(
            proxy_location=ProxyLocation.HeadOnly,
            http_options={"host": proxy[0], "port": proxy[1]},
        )


def sized(config: ServerConfig) -> tuple[ServerConfig, Sizing]:
    """``config`` sized to the connected cluster's nodes, with this server start's id."""
    scaling = config.autoscaling
    gpus_given = config.replica_gpus is not None
    replica_gpus, by_gpus = gpu_share(config, _cluster_gpus(config))
    if by_gpus is not None and scaling is None:  # one replica per GPU: CPUs shared among them
        config = config.model_copy(update={"replicas": by_gpus})
    config = config.model_copy(update={"replica_gpus": replica_gpus})
    if scaling is None:
        sizing = size(config, _node_cpus(config))
    else:  # CPUs per replica such that the most replicas fit
        most = config.model_copy(update={"replicas": scaling.max_replicas})
        sizing = dataclasses.replace(
            size(most, _node_cpus(config)),
            autoscaling=f"{scaling.min_replicas}-{scaling.max_replicas} replicas (autoscaling "
            f"at {scaling.target_in_flight:g} requests in flight each)",
        )
    config = config.model_copy(
        update={
            "replicas": None if scaling is not None else sizing.replicas,
            "replica_cpus": sizing.replica_cpus,
            "run": config.run or uuid.uuid4().hex[:12],
        }
    )
    chosen = sizing.sized or by_gpus is not None or not gpus_given
    return config, dataclasses.replace(sizing, replica_gpus=replica_gpus, sized=chosen)


def deploy(config: ServerConfig, *, name: str = "serving") -> tuple[ServerConfig, Sizing]:
    """Deploy (or update) the application; returns once every replica serves, with the config
    as deployed (sized to the cluster) and how it was sized."""
    config, sizing = sized(config)
    handle = controller_for(name, control_settings(config), config.state_file)
    state_file = None if config.state_file is None else str(config.state_file)
    ray.get(handle.configure.remote(control_settings(config), state_file))
    serve.run(build(config), name=name, route_prefix=None)
    return config, sizing


def app(args: dict[str, Any]) -> serve.Application:
    """The application builder for Ray Serve's config files (``serve deploy``, a RayService's
    ``serveConfigV2``): ``args`` is the server config as ``serving config`` prints it, checked
    here (Ray passes unknown keys through), and sized to the cluster when it deploys."""
    try:
        config = ServerConfig.model_validate(args)
    except pydantic.ValidationError as error:
        raise ValueError(f"serving: invalid args: {describe_errors(error)}") from None
    if config.replica_cpus is None and not _node_cpus(config):
        raise ValueError(
            "serving: no Ray node with CPUs for a replica has joined yet, so the replicas "
            "cannot be sized to the cluster: give replica_cpus in the args"
        )
    return build(sized(config)[0])


def controller(name: str = "serving") -> Any:
    """The application's controller actor handle (None without one), for operations and
    tests."""
    return existing_controller(name)


def current_state(name: str = "serving") -> DesiredState:
    """The application's desired state, as its controller holds it now."""
    handle = existing_controller(name)
    if handle is None:
        return DesiredState()
    return cast(DesiredState, ray.get(handle.current.remote()))


def replica_actor_names(name: str = "serving") -> list[str]:
    """Ray actor names of the application's live replicas (for operations and tests)."""
    prefix = f"SERVE_REPLICA::{name}#{DEPLOYMENT_NAME}#"
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    ]


def delete(name: str = "serving") -> None:
    """Delete the application and its controller (a state file is kept for the next start)."""
    serve.delete(name)
    forget(name)


def shutdown() -> None:
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


class _ProxiedApp:
    """The replica's HTTP app, built on the replica at its first call (Ray Serve builds an
    ingress app synchronously; loading the models needs the event loop)."""

    def __init__(self, config: ServerConfig, app: str) -> None:
        self._config = config
        self._app_name = app
        self._asgi: Any = None
        self._starting: asyncio.Future[None] | None = None

    async def _start(self) -> None:
        from serving.transport.http import build_app

        normal_priority()
        handle = controller_for(
            self._app_name, control_settings(self._config), self._config.state_file
        )
        replica = Replica(self._config, RayChannel(handle), replica=f"proxied-{os.getpid()}")
        await replica.follower.converge()
        replica.follower.start()
        replica.dataplane.set_ready(True)
        self._asgi = build_app(
            replica.dataplane,
            max_request_bytes=self._config.max_request_bytes,
            limits=self._config.input_limits(),
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._asgi is None:
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._start())
            await asyncio.shield(self._starting)
        await self._asgi(scope, receive, send)


class ProxiedServer:
    """Marker class for the proxied deployment; its routes come from the ASGI builder."""


def deploy_behind_proxy(config: ServerConfig, *, name: str = "serving-proxied") -> Any:
    """The same server behind Ray Serve's HTTP proxy (and its handle hop), for comparison.

    Needs ``connect(proxy=...)``. HTTP only; ``config``'s ports are not used.
    """
    assert config.replicas is not None and config.replica_cpus is not None

    def builder() -> Any:  # Ray Serve calls a plain function to build the app on the replica
        return _ProxiedApp(config, name)

    ingress = serve.ingress(builder)
    deployment = serve.deployment(name="ProxiedServer")(ingress(ProxiedServer))
    app = deployment.options(
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.replica_cpus},
        # Ray Serve's default (5) makes its router back off and retry under any real
        # concurrency; measured at its best instead.
        max_ongoing_requests=1024,
    ).bind()
    handle = controller_for(name, control_settings(config), config.state_file)
    ray.get(handle.configure.remote(control_settings(config), None))
    return serve.run(app, name=name, route_prefix="/")
