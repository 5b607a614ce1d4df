"""Autoscaling on the server's own load, through Ray Serve's autoscaler: a real application,
real clients, a model slowed by added compute so that the test controls how many requests are
in flight."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from serving.control import cluster
from serving.transport.http import SERVED_BY
from tests.integration import canaries
from tests.integration.clients import In, V2Client
from tests.integration.conftest import Server, running_server
from tests.integration.traffic import Traffic

TARGET_IN_FLIGHT = 2.0
HEAVY_SENDERS = 6
"""Clients that each keep one request in flight, back to back: ~6 in flight asks for
ceil(6 / 2) = 3 replicas, capped at the maximum, 2."""
PIXELS = np.full((1, 64), 8.0, dtype=np.float32)


@pytest.fixture(scope="module")
def scaled(
    ray_serve: None, demo_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("autoscaling") / "repo"
    repository.mkdir()
    slow = repository / "slow"
    slow.mkdir()
    shutil.copy(demo_repository / "digits" / "config.yaml", slow / "config.yaml")
    base = onnx.load(str(demo_repository / "digits" / "2" / "model.onnx"))
    model, extra_s = canaries.slower_by(base, 0.02)
    print(f"the slow model takes {extra_s * 1000:.0f} ms more a call")
    canaries.save(model, slow / "1" / "model.onnx")
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_in_flight": TARGET_IN_FLIGHT,
        "upscale_delay_s": 1.0,
        "downscale_delay_s": 6.0,
        "look_back_s": 2.0,
    }
    with running_server("autoscaled", repository, autoscaling=autoscaling) as started:
        yield started


class InFlight:
    """``senders`` clients sending back to back; samples how many requests the test has in
    flight (theirs, and ``also``'s)."""

    def __init__(self, server: Server, senders: int, also: Callable[[], int]) -> None:
        self._server = server
        self._also = also
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.now = 0
        self.failed = 0
        self.answered = 0
        self._samples: list[int] = []
        self._threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> InFlight:
        for thread in [*self._threads, self._sampler]:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in [*self._threads, self._sampler]:
            thread.join(timeout=60)

    def mean_since(self, index: int) -> float:
        window = self._samples[index:]
        return sum(window) / len(window)

    @property
    def samples(self) -> int:
        return len(self._samples)

    def _send(self) -> None:
        client = V2Client("http", self._server.http_url, self._server.grpc_url)
        while not self._stop.is_set():
            with self._lock:
                self.now += 1
            try:
                client.infer("slow", [In("input", PIXELS, "FP32")])
                self.answered += 1
            except Exception:
                self.failed += 1
            finally:
                with self._lock:
                    self.now -= 1

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append(self.now + self._also())


def replicas(server: Server) -> int:
    return len(cluster.replica_actor_names(server.app))


def autoscaler_reading(server: Server) -> dict[str, float] | None:
    summary = httpx.get(f"http://{server.http_url}/v2/-/summary", timeout=10).json()
    reading: dict[str, float] | None = summary["autoscaling"]
    return reading


def until(condition: object, timeout_s: float, what: str) -> float:
    began = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - began < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.25)
    return time.monotonic() - began


def test_load_adds_a_replica_and_idleness_removes_it_without_a_failed_request(
    scaled: Server,
) -> None:
    assert replicas(scaled) == 1
    light = Traffic(
        scaled.http_url, scaled.grpc_url, "slow", [In("input", PIXELS, "FP32")],
        lambda outputs: None, senders=1, rate_per_s=10,
    )  # fmt: skip
    with light:
        light.wait_for(20)
        with InFlight(scaled, HEAVY_SENDERS, lambda: light.in_flight) as heavy:
            up = until(lambda: replicas(scaled) == 2, 60, "a second replica")
            # The decision's signal against what the test drives, over the same seconds.
            first = heavy.samples
            readings = []
            for _ in range(8):
                time.sleep(0.5)
                reading = autoscaler_reading(scaled)
                assert reading is not None
                readings.append(reading["in_flight"])
            driven = heavy.mean_since(first)
            read = sum(readings) / len(readings)
            assert reading["desired_replicas"] == 2 and reading["max_replicas"] == 2, reading
            top = subprocess.run(
                [sys.executable, "-m", "serving.cli", "top", "--once", "--interval", "0.3",
                 "--url", scaled.http_url],
                capture_output=True, text=True, timeout=60,
                env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
            )  # fmt: skip
            assert "autoscaling: 2 replica(s) (1-2)" in top.stdout, top.stdout + top.stderr
        down = until(lambda: replicas(scaled) == 1, 90, "back to one replica")
        light.wait_for(20)  # the survivor serves on
    print(
        f"scaled up after {up:.1f} s, down {down:.1f} s after the load stopped; the autoscaler "
        f"read {read:.2f} in flight while the test drove {driven:.2f}; "
        f"heavy answered {heavy.answered}, failed {heavy.failed}; light answered "
        f"{light.tally.answered}, failed {light.tally.failed}"
    )
    assert heavy.failed == 0
    assert light.tally.failed == 0, light.tally.failures
    # The test counts from before a request is sent to after its answer is read, the
    # replicas from when it enters a model version to when it leaves: a little less. The
    # readings are Ray's look-back averages, sampled, so not over exactly the same seconds:
    # once in a full run on 2 cores they read 5% above (7.65 against 7.28).
    assert driven * 0.8 <= read <= driven * 1.15, (read, driven)


def test_a_drained_replica_moves_its_clients_off_and_is_replaced(
    ray_serve: None, demo_repository: Path
) -> None:
    """``POST /-/drain`` (a Kubernetes preStop hook's call): the replica that takes it says
    not-ready and ``Connection: close`` while it still accepts, then closes its sockets and
    GOAWAYs its gRPC clients; Ray Serve replaces it. Continuous clients on both protocols,
    on kept-alive and fresh connections, see no failure."""
    with running_server("drained", demo_repository, replicas=2, deregister_s=3.0) as app:
        before = set(cluster.replica_actor_names(app.app))
        assert len(before) == 2
        traffic = Traffic(
            app.http_url, app.grpc_url, "digits", [In("input", PIXELS, "FP32")],
            lambda outputs: None, rate_per_s=100,
        )  # fmt: skip
        with traffic:
            traffic.wait_for(50)
            drained = httpx.post(f"http://{app.http_url}/-/drain", timeout=10)
            assert drained.status_code == 200 and drained.json() == {"draining": True}
            victim = drained.headers[SERVED_BY]
            closing = None
            for _ in range(100):  # fresh connections: the kernel spreads them over both
                with httpx.Client(timeout=10) as client:
                    answer = client.post(
                        f"http://{app.http_url}/v2/models/digits/infer",
                        json={"inputs": [{"name": "input", "shape": [1, 64],
                                          "datatype": "FP32", "data": [8.0] * 64}]},
                    )  # fmt: skip
                assert answer.status_code == 200
                if answer.headers[SERVED_BY] == victim:
                    closing = answer
                    break
            assert closing is not None, "the draining replica took no new connection"
            assert closing.headers["connection"] == "close"
            ready = httpx.get(f"http://{app.http_url}/v2/health/ready", timeout=10)
            assert ready.status_code in (200, 503)  # whichever replica the probe reached
            replaced = until(
                lambda: (now := set(cluster.replica_actor_names(app.app))) != before
                and len(now) == 2,
                90, "the drained replica replaced",
            )  # fmt: skip
            traffic.wait_for(50)
        print(
            f"drained replica replaced after {replaced:.1f} s; clients answered "
            f"{traffic.tally.answered}, failed {traffic.tally.failed}"
        )
        assert traffic.tally.failed == 0, traffic.tally.failures
