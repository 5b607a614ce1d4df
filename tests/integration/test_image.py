"""The images, for real: ``Dockerfile.cuda`` is hadolint-clean, and its ``cpu`` target builds
daemonless (buildah, chroot isolation, vfs storage) on a Debian base bootstrapped here, runs
(podman with runc) as a non-root user, answers ``/v2/health/ready`` and a demo inference, and
stays within its size budget. The NVIDIA base of the ``cuda`` target cannot be pulled here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from serving.transport.servers import reserve_port

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile.cuda"
CPU_BUDGET_BYTES = 1_000_000_000
"""The README's budget for the cpu image."""
MIRROR = "http://deb.debian.org/debian"
TOOLS = ("buildah", "podman", "debootstrap", "runc")


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    kept = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.startswith("!")]  # fmt: skip
    assert kept == ["!pyproject.toml", "!README.md", "!serving/", "!kernels/"]


class Podman:
    """buildah and podman on storage of their own (removed after), so that the test leaves
    nothing in the machine's image store."""

    def __init__(self, where: Path) -> None:
        self.flags = ["--root", str(where / "root"), "--runroot", str(where / "run"),
                      "--storage-driver", "vfs"]  # fmt: skip

    def __call__(self, tool: str, *args: str, timeout: float = 600, **kw: object) -> str:
        result = subprocess.run([tool, *self.flags, *args], capture_output=True, text=True,
                                timeout=timeout, **kw)  # type: ignore[call-overload]  # fmt: skip
        assert result.returncode == 0, f"{tool} {' '.join(args[:3])}: {result.stderr[-3000:]}"
        return str(result.stdout)


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Podman, str]]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages; .ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("daemonless builds with chroot isolation need root on this machine")
    where = tmp_path_factory.mktemp("image")
    podman = Podman(where)
    rootfs = where / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    for trimmed in (
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
        "var/cache/apt/archives",
        "var/lib/apt/lists",
    ):  # as Debian's slim image
        shutil.rmtree(rootfs / trimmed, ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    podman("podman", "import", "-", "localhost/debian-minbase:bookworm", stdin=tar.stdout)
    tar.wait(timeout=60)
    shutil.rmtree(rootfs)
    # Docker's image format: OCI's has no HEALTHCHECK.
    build = ["bud", "--format", "docker", "--isolation", "chroot", "--target", "cpu",
             "-f", str(DOCKERFILE),
             "--build-arg", "CPU_BASE_IMAGE=localhost/debian-minbase:bookworm",
             "-t", "localhost/serving:cpu"]  # fmt: skip
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():  # the machine's trust (a TLS-inspecting proxy's CA), mounted only
        build += ["--volume", f"{bundle}:/run/ca.crt:ro", "--build-arg", "PIP_CERT=/run/ca.crt"]
    began = time.monotonic()
    podman("buildah", *build, str(ROOT), timeout=1200)
    print(f"cpu image built in {time.monotonic() - began:.0f} s")
    try:
        yield podman, "localhost/serving:cpu"
    finally:
        subprocess.run(["podman", *podman.flags, "rm", "-af"], capture_output=True, timeout=120)
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.slow
def test_the_cpu_image_builds_runs_as_non_root_and_serves_the_demo(
    cpu_image: tuple[Podman, str],
) -> None:
    podman, image = cpu_image
    (config,) = json.loads(podman("podman", "image", "inspect", image))
    size = int(config["Size"])
    print(f"cpu image: {size / 1e6:.0f} MB (budget {CPU_BUDGET_BYTES / 1e6:.0f} MB)")
    settings = config["Config"]
    assert settings["User"] == "10001"
    assert settings["Entrypoint"] == ["serving", "serve", "/models"]
    assert {"8000/tcp", "8001/tcp", "8002/tcp"} <= set(settings["ExposedPorts"])
    health = config.get("Healthcheck") or settings.get("Healthcheck") or {}
    assert "/v2/health/ready" in " ".join(health.get("Test", [])), sorted(config)
    assert size < CPU_BUDGET_BYTES
    held = [reserve_port() for _ in range(3)]
    http, grpc, metrics = (str(s.getsockname()[1]) for s in held)
    for sock in held:
        sock.close()  # the container binds them next
    name = "serving-image-test"
    limits = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
    ports = ["-e", f"SERVING_HTTP_PORT={http}", "-e", f"SERVING_GRPC_PORT={grpc}",
             "-e", f"SERVING_METRICS_PORT={metrics}"]  # fmt: skip
    podman("podman", "run", "-d", "--name", name, "--runtime", "runc", "--network", "host",
           "--shm-size", "1g", *limits, *ports, image)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                logs = subprocess.run(["podman", *podman.flags, "logs", name],
                                      capture_output=True, text=True, timeout=60)  # fmt: skip
                pytest.fail(f"not ready in 240 s: {(logs.stdout + logs.stderr)[-3000:]}")
            time.sleep(1)
        assert podman("podman", "exec", name, "id", "-u").strip() == "10001"
        podman("podman", "healthcheck", "run", name, timeout=60)  # exit 0: healthy
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        pixels = httpclient.InferInput("input", [1, 64], "FP32")
        pixels.set_data_from_numpy(np.full((1, 64), 8.0, dtype=np.float32))
        result = client.infer("digits", [pixels])
        assert result.as_numpy("label").shape == (1,)
    finally:
        subprocess.run(["podman", *podman.flags, "rm", "-f", name], capture_output=True,
                       timeout=120)  # fmt: skip
