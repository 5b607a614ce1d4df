"""``serving config``: the Ray Serve config it prints deploys with ``serve deploy`` onto a running
local Ray (a head started with ``ray start``, dashboard on loopback, token authentication on)
and serves what ``serving serve`` serves; unknown keys are refused, naming them."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.transport.servers import reserve_port
from tests.integration.clients import In, V2Client
from tests.integration.conftest import Server, wait_ready

PIXELS = np.arange(64, dtype=np.float32).reshape(1, 64) % 17


@dataclass
class LocalRay:
    dashboard: str
    env: dict[str, str]
    agent_port: int

    def run(self, *command: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout_s, env=self.env
        )


def _free_port() -> int:
    held = reserve_port()
    port: int = held.getsockname()[1]
    held.close()
    return port


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRay]:
    """A second Ray on this machine, as a user starts one (``ray start --head``), with its
    dashboard (``serve deploy`` talks to it) on loopback and every port its own."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path_factory.mktemp("home")),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "COLUMNS": "200",
    }
    dashboard, agent = _free_port(), _free_port()
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dashboard,
        "--dashboard-agent-listen-port": agent,
        "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--ray-client-server-port": _free_port(),
    }
    head = subprocess.Popen(
        [
            os.path.join(bin_dir, "ray"), "start", "--head", "--block", "--num-cpus=2",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    ray = LocalRay(f"http://127.0.0.1:{dashboard}", env, agent)
    try:
        deadline = time.monotonic() + 90
        while ray.run("serve", "status", "-a", ray.dashboard).returncode != 0:
            assert head.poll() is None, "ray start exited"
            assert time.monotonic() < deadline, "the local Ray's dashboard did not come up"
            time.sleep(1)
        yield ray
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # ray start --block stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def serving(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_serving_config_deploys_with_serve_deploy_and_serves_the_same_answers(
    local_ray: LocalRay, demo_repository: Path, server: Server, tmp_path: Path
) -> None:
    held = [reserve_port(), reserve_port(), reserve_port()]
    http, grpc, metrics = (s.getsockname()[1] for s in held)
    printed = serving(
        "config", str(demo_repository), "--host", "127.0.0.1", "--http-port", str(http),
        "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--replicas", "1",
        "--replica-cpus", "1", "--name", "configured",
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    document = yaml.safe_load(printed.stdout)
    # Ray's own schema takes it, and gives back the same application and args.
    schema = ServeDeploySchema.model_validate(document)
    (application,) = schema.applications
    assert application.name == "configured"
    assert application.args == document["applications"][0]["args"]
    assert application.args["replicas"] == 1 and application.args["http_port"] == http
    path = tmp_path / "serve.yaml"
    path.write_text(printed.stdout)
    assert serving("config", "--check", str(path)).returncode == 0
    deployed = local_ray.run("serve", "deploy", str(path), "-a", local_ray.dashboard)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        wait_ready(f"127.0.0.1:{http}", timeout_s=120)
        theirs = V2Client("http", f"127.0.0.1:{http}", f"127.0.0.1:{grpc}")
        ours = V2Client("http", server.http_url, server.grpc_url)  # `serving serve`'s path
        for client in (theirs, V2Client("grpc", f"127.0.0.1:{http}", f"127.0.0.1:{grpc}")):
            for version in ("1", "2"):
                got = client.infer("digits", [In("input", PIXELS, "FP32")], version=version)
                want = ours.infer("digits", [In("input", PIXELS, "FP32")], version=version)
                assert got.model_version == want.model_version == version
                for name, array in want.outputs.items():
                    np.testing.assert_array_equal(got.outputs[name], array)
        metadata = httpx.get(f"http://127.0.0.1:{http}/v2/models/digits", timeout=10).json()
        expected = httpx.get(f"http://{server.http_url}/v2/models/digits", timeout=10).json()
        assert metadata == expected
    finally:
        local_ray.run("serve", "shutdown", "-y", "-a", local_ray.dashboard)
        for sock in held:
            sock.close()


def test_unknown_keys_are_refused_naming_them(
    local_ray: LocalRay, demo_repository: Path, tmp_path: Path
) -> None:
    printed = serving("config", str(demo_repository), "--host", "127.0.0.1", "--name", "bad")
    document = yaml.safe_load(printed.stdout)
    application = document["applications"][0]
    application["deployments"] = [{"name": "Replica", "num_replica": 2}]  # ray #61439
    application["args"]["replicaz"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    checked = serving("config", "--check", str(path))
    assert checked.returncode == 1
    assert "unknown key 'applications[0].deployments[0].num_replica'" in checked.stdout
    assert "applications[0].args: replicaz: Extra inputs are not permitted" in checked.stdout
    # Ray deploys what it is given; the server's builder refuses unknown args, naming them.
    del application["deployments"]
    path.write_text(yaml.safe_dump(document))
    deployed = local_ray.run("serve", "deploy", str(path), "-a", local_ray.dashboard)
    assert deployed.returncode == 0, deployed.stderr
    try:
        deadline = time.monotonic() + 120
        while True:
            status = local_ray.run("serve", "status", "-a", local_ray.dashboard).stdout
            if "DEPLOY_FAILED" in status or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert "DEPLOY_FAILED" in status, status
        assert "serving: invalid args: replicaz: Extra inputs are not permitted" in status
    finally:
        local_ray.run("serve", "shutdown", "-y", "-a", local_ray.dashboard)


def test_the_kuberay_probes_and_scrapes_point_at_endpoints_the_server_answers(
    server: Server,
) -> None:
    """Every httpGet probe, KubeRay's own serve check (``GET /-/healthz`` on the ``serve``
    port, "success" in the body) and the PodMonitor's endpoint, against a running server.
    (Liveness is the raylet's, as KubeRay's default; the preStop hook's drain is tested in
    test_autoscaling.py.)"""
    root = Path(__file__).resolve().parents[2] / "deploy" / "kuberay"
    by_port = {8000: server.http_url, 8002: server.metrics_url}
    checked = []
    for variant in ("cpu", "gpu"):
        for document in yaml.safe_load_all((root / variant / "serving.yaml").read_text()):
            if document["kind"] == "RayService":
                for group in document["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
                    for container in group["template"]["spec"]["containers"]:
                        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                        get = container["readinessProbe"]["httpGet"]
                        checked.append((get["port"], get["path"], ""))
                        checked.append((ports["serve"], "/-/healthz", "success"))
                        assert "local_raylet_healthz" in str(container["livenessProbe"])
            elif document["kind"] == "PodMonitor":
                for endpoint in document["spec"]["podMetricsEndpoints"]:
                    checked.append((8002 if endpoint["port"] == "metrics" else -1,
                                    endpoint["path"], "serving_requests_total"))  # fmt: skip
    assert len(checked) == 6
    for port, path, body in checked:
        answer = httpx.get(f"http://{by_port[port]}{path}", timeout=10)
        assert answer.status_code == 200, (port, path, answer.text)
        assert body in answer.text, (port, path)


def test_the_kuberay_liveness_probe_asks_what_a_ray_node_answers(local_ray: LocalRay) -> None:
    """The workers' liveness is the raylet's health, read from the node's dashboard agent
    (52365 in a pod; this local Ray's agent listens elsewhere)."""
    root = Path(__file__).resolve().parents[2] / "deploy" / "kuberay"
    for variant in ("cpu", "gpu"):
        for document in yaml.safe_load_all((root / variant / "serving.yaml").read_text()):
            if document["kind"] != "RayService":
                continue
            for group in document["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
                (container,) = group["template"]["spec"]["containers"]
                command = " ".join(container["livenessProbe"]["exec"]["command"])
                url = command.split("http://localhost:52365", 1)[1].split()[0]
                answer = httpx.get(f"http://127.0.0.1:{local_ray.agent_port}{url}", timeout=10)
                assert answer.status_code == 200 and "success" in answer.text, answer.text
