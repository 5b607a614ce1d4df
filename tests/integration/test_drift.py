"""Drift detection through the real server, two replicas: traffic like the evaluation set stays
quiet, a 1-sigma shift of one pixel is caught (HTTP endpoint, /metrics gauge, ``serving drift``); a
model without a profile gets one from its first requests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.integration.conftest import Server, running_server
from tests.integration.test_metrics import samples, scrape

WINDOW = 200


@pytest.fixture(scope="module")
def drifting(ray_serve: None, test_repository: Path) -> Iterator[Server]:
    with running_server(
        "drifting",
        test_repository,
        replicas=2,
        drift_sample_fraction=1.0,
        drift_window_rows=WINDOW,
        drift_reference_rows=150,
    ) as started:
        yield started


def send(server: Server, model: str, name: str, rows: np.ndarray, per_request: int = 10) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    for start in range(0, len(rows), per_request):
        chunk = np.ascontiguousarray(rows[start : start + per_request], dtype=np.float32)
        tensor = httpclient.InferInput(name, list(chunk.shape), "FP32")
        tensor.set_data_from_numpy(chunk)
        client.infer(model, [tensor], model_version="1")


def drift_of(server: Server, model: str) -> dict[str, Any]:
    response = httpx.get(f"http://{server.http_url}/v2/models/{model}/versions/1/drift", timeout=15)
    assert response.status_code == 200, response.text
    (version,) = response.json()["versions"]
    return version  # type: ignore[no-any-return]


def wait_for_windows(server: Server, model: str, windows: int, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = drift_of(server, model)
        if state["windows"] >= windows:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.3)


def test_a_one_sigma_shift_of_one_pixel_is_caught_and_reported(drifting: Server) -> None:
    evaluation = np.load(drifting.repository / "digits" / "evaluation.npz")["inputs"]
    state = drift_of(drifting, "digits")
    assert state["reference"].startswith("evaluation set")
    rng = np.random.default_rng(5)
    send(drifting, "digits", "input", evaluation[rng.integers(0, len(evaluation), 2 * WINDOW)])
    quiet = wait_for_windows(drifting, "digits", 1)  # rows arriving together: one window
    assert quiet["latest"]["detected"] is False, quiet
    shifted = evaluation[rng.integers(0, len(evaluation), 2 * WINDOW)].copy()
    pixel = 20
    shifted[:, pixel] += evaluation[:, pixel].std()
    send(drifting, "digits", "input", shifted)
    caught = wait_for_windows(drifting, "digits", quiet["windows"] + 1)
    latest = caught["latest"]
    assert latest["detected"] is True, caught
    assert latest["tensors"]["input"]["worst_feature"] == pixel
    assert latest["tensors"]["input"]["p_value"] < latest["alpha"]
    labels = (("model", "digits"), ("version", "1"))
    deadline = time.monotonic() + 10  # replicas hear the controller's scores within a second
    while samples(scrape(drifting)[0])["serving_drift_detected"].get(labels) != 1:
        assert time.monotonic() < deadline, "the drift gauge never rose"
        time.sleep(0.2)
    gauges = samples(scrape(drifting)[0])
    tensor = (("model", "digits"), ("tensor", "input"), ("version", "1"))
    assert gauges["serving_drift_p_value"][tensor] < latest["alpha"]
    shown = subprocess.run(
        [sys.executable, "-m", "serving.cli", "drift", "digits", "--version", "1",
         "--url", drifting.http_url],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "DRIFTING" in shown.stdout and "evaluation set" in shown.stdout


def test_a_model_without_a_profile_gets_one_from_its_first_requests(drifting: Server) -> None:
    state = drift_of(drifting, "add_sub")
    assert state["reference"] is None
    rng = np.random.default_rng(9)
    client = httpclient.InferenceServerClient(drifting.http_url)

    def send_add_sub(requests: int) -> None:
        for _ in range(requests):  # 5 rows a request, every request sampled
            tensors = []
            for name in ("INPUT0", "INPUT1"):
                tensor = httpclient.InferInput(name, [5, 16], "FP32")
                tensor.set_data_from_numpy(rng.normal(size=(5, 16)).astype(np.float32))
                tensors.append(tensor)
            client.infer("add_sub", tensors)

    send_add_sub(40)  # 200 rows: more than the 150 the reference takes
    deadline = time.monotonic() + 20
    while (state := drift_of(drifting, "add_sub"))["reference"] is None:
        assert time.monotonic() < deadline, state
        time.sleep(0.3)
    assert state["reference"].startswith("first ")
    assert state["reference_features"] == 4 * 16  # two inputs, two outputs, 16 columns each
    time.sleep(1.5)  # every replica has it (poll answers, at least every second)
    send_add_sub(2 * WINDOW // 5)
    state = wait_for_windows(drifting, "add_sub", 1)
    assert state["latest"]["detected"] is False, state
