"""``serving validate`` as a CI pipeline would run it."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as grpcclient

from benchmarks.memory import descendants
from serving.transport.servers import reserve_port


def run_validate(repository: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "validate", str(repository), *options],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_validate_passes_on_the_demo(demo_repository: Path) -> None:
    result = run_validate(demo_repository)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all models loaded and answered a sample inference" in result.stdout
    assert "digits" in result.stdout


def test_validate_runs_the_offline_gate(demo_repository: Path) -> None:
    passed = run_validate(demo_repository, "--baseline", "digits:1")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "candidate version 2" in passed.stdout and "passes" in passed.stdout
    failed = run_validate(demo_repository, "--baseline", "digits:2", "--candidate", "1")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = failed.stdout[failed.stdout.index("offline gate") :]
    assert line.count("%") == 2 and "fails" in line, line
    strict = run_validate(demo_repository, "--baseline", "digits:1", "--margin", "0.5")
    assert strict.returncode == 1 and "margin 50.0 points" in strict.stdout


def test_validate_fails_on_a_corrupt_model(demo_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repository / "add_sub", repo / "add_sub")
    (repo / "corrupt" / "1").mkdir(parents=True)
    (repo / "corrupt" / "1" / "model.onnx").write_bytes(b"\x00garbage")
    result = run_validate(repo)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout
    assert "cannot load corrupt/1/model.onnx" in result.stdout
    assert "1 problem(s) found" in result.stdout


def test_profile_writes_each_versions_drift_reference(
    demo_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repository / "digits", repo / "digits")
    for stale in (repo / "digits").glob("*/profile.json"):
        stale.unlink()
    command = [sys.executable, "-m", "serving.cli", "profile", str(repo), "digits"]
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for version in ("1", "2"):
        document = json.loads((repo / "digits" / version / "profile.json").read_text())
        assert set(document["tensors"]) == {"input", "probabilities", "label"}
        assert document["source"].startswith("evaluation set")
    assert "75 features" in result.stdout  # 64 pixels, 10 probabilities, the label
    validated = run_validate(repo)
    assert validated.returncode == 0 and "profile.json" in validated.stdout
    (repo / "digits" / "evaluation.npz").unlink()
    missing = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 1 and "no evaluation set" in missing.stdout


def test_validate_rejects_a_missing_repository(tmp_path: Path) -> None:
    result = run_validate(tmp_path / "nowhere")
    assert result.returncode == 2
    assert "is not a directory" in result.stdout


def listening(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket that ``pids`` listen on (``ss``)."""
    table = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in table.splitlines():
        fields = line.split()
        local, users = fields[3], " ".join(fields[5:])
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", users)}
        if owners & pids:
            address, _, port = local.rpartition(":")
            name = re.search(r'\(\("([^"]+)"', users)
            found.append((address.strip("[]"), int(port), name.group(1) if name else "?"))
    return found


def is_loopback_address(address: str) -> bool:
    return address.removeprefix("::ffff:").startswith("127.") or address == "::1"


def check_listening_surface(pid: int, ports: set[int]) -> None:
    """What ``serving serve`` (and the Ray it embeds) listens on: the serving ports on every
    interface, everything else (GCS, raylet, workers, Ray's agents) on loopback only; and Ray
    refuses a call without its token."""
    sockets = listening(set(descendants(pid)))
    exposed = {(a, p, n) for a, p, n in sockets if not is_loopback_address(a)}
    assert {p for _, p, _ in exposed} == ports, sockets
    ray_sockets = [s for s in sockets if s[1] not in ports]
    assert any(name == "gcs_server" for _, _, name in ray_sockets), sockets
    gcs = next((a, p) for a, p, name in ray_sockets if name == "gcs_server")
    host = "127.0.0.1" if gcs[0].startswith(("127.", "::ffff:127.")) else gcs[0]
    channel = grpc.insecure_channel(f"{host}:{gcs[1]}")
    call = channel.unary_unary(
        "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    with pytest.raises(grpc.RpcError) as refused:
        call(b"", timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_serve_answers_both_protocols_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The Quickstart's first command, from a cold demo cache, with its own embedded Ray, bound
    as by default (every interface): only the serving ports are reachable from another host."""
    held = [reserve_port(), reserve_port(), reserve_port()]
    http_port, grpc_port, metrics_port = (s.getsockname()[1] for s in held)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), RAY_ADDRESS="")
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve",
         "--http-port", str(http_port), "--grpc-port", str(grpc_port),
         "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    )  # type: ignore[union-attr]
    reader.start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("Press Ctrl-C to stop" in line for line in output):
            assert time.monotonic() < deadline, "serving serve did not start:\n" + "".join(output)
            assert process.poll() is None, "serving serve exited:\n" + "".join(output)
            with contextlib.suppress(queue.Empty):
                output.append(lines.get(timeout=1))
        ready = httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=5)
        assert ready.status_code == 200
        assert grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_model_ready("digits")
        assert (tmp_path / "cache" / "serving").is_dir()
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "serving_replicas_ready 1.0" in metrics.text
        check_listening_surface(process.pid, {http_port, grpc_port, metrics_port})
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        for sock in held:
            sock.close()
    while not lines.empty():
        output.append(lines.get())
    text = "".join(output)
    assert process.returncode == 0, text[-3000:]
    assert f"HTTP  http://localhost:{http_port}/v2" in text
    assert f"metrics  http://localhost:{metrics_port}/metrics" in text
    assert "Shutting down" in text
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=2)
