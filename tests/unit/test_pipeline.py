"""Every step of the request pipeline on an in-process replica: the real controller, registry,
follower, dataplane and HTTP app (httpx's ASGI transport), the gRPC servicer with a stand-in
context; fake runtimes, no Ray, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import pytest

from serving.clock import MONOTONIC
from serving.config import ModelControlMode
from serving.control.channel import LocalChannel
from serving.control.controller import Controller, ControlSettings
from serving.control.follower import Follower
from serving.dataplane import DataPlane
from serving.models.execution import Workers
from serving.models.registry import Registry
from serving.protocol.proto import grpc_service_pb2 as pb
from serving.security.auth import Authenticator, is_loopback
from serving.transport.grpc import AuthInterceptor, InferenceServicer, peer_host
from serving.transport.http import build_app
from tests.unit.fakes import FakeFiles, write_model

X = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}


class Stack:
    def __init__(self, dataplane: DataPlane, http: httpx.AsyncClient, controller: Controller):
        self.dataplane = dataplane
        self.http = http
        self.controller = controller
        self.follower: Follower | None = None

    def from_peer(self, host: str) -> httpx.AsyncClient:
        app = self.http._transport.app  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app, client=(host, 5000))
        return httpx.AsyncClient(transport=transport, base_url="http://replica")


@contextlib.asynccontextmanager
async def replica(repo: Path, mode: ModelControlMode = "explicit") -> AsyncIterator[Stack]:
    controller = Controller(ControlSettings(repo, mode=mode))
    await controller.start()
    channel = LocalChannel(controller)
    with ThreadPoolExecutor(2) as executor:
        registry = Registry(repo, FakeFiles(), workers=Workers(executor), clock=MONOTONIC)
        dataplane = DataPlane(registry, channel)
        app = build_app(dataplane, max_request_bytes=1 << 20, served_by="r0@node")
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as http:
            stack = Stack(dataplane, http, controller)
            try:
                yield stack
            finally:
                if stack.follower is not None:
                    await stack.follower.stop()
                await registry.close()
                await controller.stop()


async def start(stack: Stack) -> None:
    """What a replica does before it listens: converge on the controller's revision."""
    follower = Follower(
        LocalChannel(stack.controller), stack.dataplane.registry, replica="r0", poll_timeout_s=0.05
    )
    await follower.converge()
    follower.start()
    stack.follower = follower
    stack.dataplane.set_ready(True)


def run(repo: Path, test: Callable[[Stack], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with replica(repo, **options) as stack:
            await test(stack)

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "m", 1)
    write_model(tmp_path, "m", 2, config="version_policy: all\nmax_batch_size: 8\n")
    write_model(tmp_path, "other", 1)
    return tmp_path


def test_health_bodies_and_the_kuberay_probe_follow_readiness(repo: Path) -> None:
    async def test(stack: Stack) -> None:
        http = stack.http
        live = await http.get("/v2/health/live")
        assert (live.status_code, live.json()) == (200, {"live": True})
        ready = await http.get("/v2/health/ready")
        assert (ready.status_code, ready.json()) == (503, {"ready": False})
        assert (await http.get("/-/healthz")).status_code == 503
        await start(stack)
        ready = await http.get("/v2/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        probe = await http.get("/-/healthz")
        assert probe.status_code == 200 and "success" in probe.text

    run(repo, test)


def test_route_validate_schedule_execute_record(repo: Path) -> None:
    async def test(stack: Stack) -> None:
        await start(stack)
        http = stack.http
        response = await http.post("/v2/models/m/infer", json={"inputs": [X]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "2"  # the default: the highest ready version
        assert body["outputs"][0]["data"] == [6, 15]
        assert response.headers["Served-By"] == "r0@node"
        pinned = await http.post("/v2/models/m/versions/1/infer", json={"inputs": [X]})
        assert pinned.json()["model_version"] == "1"
        wrong = await http.post("/v2/models/m/infer", json={"inputs": [{**X, "datatype": "INT32"}]})
        assert wrong.status_code == 400 and "expects FP32" in wrong.json()["error"]
        stats = (await http.get("/v2/models/m/versions/2/stats")).json()["model_stats"]
        (two,) = stats
        assert two["inference_count"] == 2  # rows of the one success
        assert two["inference_stats"]["success"]["count"] == 1
        assert two["inference_stats"]["fail"]["count"] == 1
        every = (await http.get("/v2/models/stats")).json()["model_stats"]
        assert {(s["name"], s["version"]) for s in every} == {
            ("m", "1"),
            ("m", "2"),
            ("other", "1"),
        }

    run(repo, test)


@pytest.mark.parametrize("version", ["abc", "0", "007", "-1", "%C2%B2", "9" * 25])
def test_a_malformed_version_is_refused_alike_by_every_endpoint(repo: Path, version: str) -> None:
    async def test(stack: Stack) -> None:
        await start(stack)
        base = f"/v2/models/m/versions/{version}"
        answers = [
            await stack.http.get(base),
            await stack.http.get(base + "/ready"),
            await stack.http.get(base + "/config"),
            await stack.http.get(base + "/stats"),
            await stack.http.post(base + "/infer", json={"inputs": [X]}),
        ]
        assert {a.status_code for a in answers} == {400}
        assert len({a.json()["error"] for a in answers}) == 1

    run(repo, test)


def test_model_ready_says_so_in_its_body_and_unknown_models_are_404(repo: Path) -> None:
    async def test(stack: Stack) -> None:
        await start(stack)
        ready = await stack.http.get("/v2/models/m/versions/1/ready")
        assert (ready.status_code, ready.json()) == (200, {"name": "m", "ready": True})
        assert (await stack.http.get("/v2/models/nope/ready")).status_code == 404
        assert (await stack.http.get("/v2/models/m/versions/9/ready")).status_code == 404

    run(repo, test)


def test_load_with_a_config_override_and_the_config_shows_dynamic_batching(repo: Path) -> None:
    async def test(stack: Stack) -> None:
        await start(stack)
        http = stack.http
        override = {
            "max_batch_size": 8,
            "version_policy": {"all": {}},
            "dynamic_batching": {
                "preferred_batch_size": [4],
                "max_queue_delay_microseconds": 2000,
                "default_queue_policy": {
                    "max_queue_size": 16,
                    "default_timeout_microseconds": 500_000,
                },
            },
        }
        loaded = await http.post(
            "/v2/repository/models/m/load",
            json={"parameters": {"config": json.dumps(override)}},
        )
        assert loaded.status_code == 200, loaded.text
        config = (await http.get("/v2/models/m/config")).json()
        assert config["dynamic_batching"] == {
            "preferred_batch_size": [4],
            "max_queue_delay_microseconds": 2000,
            "preserve_ordering": False,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 500_000,
                "allow_timeout_override": True,
                "max_queue_size": 16,
            },
        }
        response = await http.post("/v2/models/m/infer", json={"inputs": [X]})
        assert response.json()["outputs"][0]["data"] == [6, 15]

    run(repo, test)


def test_unload_then_index_then_load_again(repo: Path) -> None:
    async def test(stack: Stack) -> None:
        await start(stack)
        http = stack.http
        assert (await http.post("/v2/repository/models/other/unload")).status_code == 200
        assert (await http.post("/v2/models/other/infer", json={"inputs": [X]})).status_code == 404
        index = (await http.post("/v2/repository/index", json={})).json()
        assert {
            "name": "other",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        } in index
        ready = (await http.post("/v2/repository/index", json={"ready": True})).json()
        assert {(r["name"], r["version"]) for r in ready} == {("m", "1"), ("m", "2")}
        assert (await http.post("/v2/repository/models/other/load")).status_code == 200
        assert (await http.post("/v2/models/other/infer", json={"inputs": [X]})).status_code == 200

    run(repo, test)


def test_model_control_refusals(repo: Path) -> None:
    async def test(stack: Stack) -> None:
        await start(stack)
        http = stack.http
        unknown = await http.post("/v2/repository/models/nope/load")
        assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]
        odd = await http.post("/v2/repository/models/m/load", json={"parameters": {"x": 1}})
        assert odd.status_code == 400 and "unrecognized load parameter 'x'" in odd.json()["error"]
        files = await http.post(
            "/v2/repository/models/m/load", json={"parameters": {"file:1/model.onnx": "AAAA"}}
        )
        assert files.status_code == 400 and "not supported" in files.json()["error"]
        bad = await http.post(
            "/v2/repository/models/m/load", json={"parameters": {"config": "{not json"}}
        )
        assert bad.status_code == 400 and "invalid 'config' parameter" in bad.json()["error"]
        async with stack.from_peer("10.1.2.3") as outside:
            refused = await outside.post("/v2/repository/models/m/unload")
            assert refused.status_code == 403
            assert "only from loopback" in refused.json()["error"]
            assert "10.1.2.3" in refused.json()["error"]
            # Reading is open to everyone.
            assert (await outside.post("/v2/repository/index")).status_code == 200
        assert (await http.post("/v2/models/m/infer", json={"inputs": [X]})).status_code == 200

    run(repo, test)


def test_model_control_is_503_where_the_mode_forbids_it(repo: Path) -> None:
    async def test(stack: Stack) -> None:
        await start(stack)
        refused = await stack.http.post("/v2/repository/models/m/unload")
        assert refused.status_code == 503
        assert "not allowed in model control mode 'none'" in refused.json()["error"]

    run(repo, test, mode="none")


class Aborted(Exception):
    pass


class Context:
    """What the servicer and the interceptors read of a gRPC call's context."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.status: grpc.StatusCode | None = None

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.status = code
        raise Aborted(message)


async def guarded_method(servicer: InferenceServicer, name: str) -> Any:
    """``name``'s handler as the server runs it: behind the authentication interceptor."""
    method = f"/inference.GRPCInferenceService/{name}"

    async def continuation(details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(getattr(servicer, name))

    details = SimpleNamespace(method=method, invocation_metadata=())
    handler = await AuthInterceptor(Authenticator()).intercept_service(continuation, details)
    return handler.unary_unary


def test_grpc_model_ready_of_unknown_is_false_and_control_checks_the_peer(repo: Path) -> None:
    async def test(stack: Stack) -> None:
        await start(stack)
        servicer = InferenceServicer(stack.dataplane)
        local = Context("ipv4:127.0.0.1:4000")
        unknown = await servicer.ModelReady(pb.ModelReadyRequest(name="nope"), local)
        assert unknown.ready is False
        missing = await servicer.ModelReady(pb.ModelReadyRequest(name="m", version="9"), local)
        assert missing.ready is False
        request = pb.RepositoryModelUnloadRequest(model_name="other")
        unload = await guarded_method(servicer, "RepositoryModelUnload")
        outside = Context("ipv4:192.168.1.7:4000")
        with pytest.raises(Aborted, match="accepted only from loopback"):
            await unload(request, outside)
        assert outside.status is grpc.StatusCode.PERMISSION_DENIED
        assert stack.dataplane.model_ready("other", None)
        await unload(request, Context("ipv6:[::1]:4000"))
        gone = await servicer.ModelReady(pb.ModelReadyRequest(name="other"), local)
        assert gone.ready is False

    run(repo, test)


@pytest.mark.parametrize(
    ("peer", "host", "local"),
    [
        ("ipv4:127.0.0.1:50051", "127.0.0.1", True),
        ("ipv4:127.8.9.1:1", "127.8.9.1", True),
        ("ipv6:[::1]:50051", "::1", True),
        ("ipv6:[::ffff:127.0.0.1]:7", "::ffff:127.0.0.1", True),
        ("unix:/tmp/socket", "unix", True),
        ("ipv4:10.0.0.5:50051", "10.0.0.5", False),
        ("ipv6:[2001:db8::1]:443", "2001:db8::1", False),
    ],
)
def test_peers_and_loopback(peer: str, host: str, local: bool) -> None:
    assert peer_host(peer) == host
    assert is_loopback(host) is local


def test_garbage_peers_are_not_loopback() -> None:
    assert not is_loopback(None)
    assert not is_loopback("localhost.evil.example")
