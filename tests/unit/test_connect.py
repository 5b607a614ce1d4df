"""The embedded Ray gets a lean control plane; a cluster or the user's environment keeps its own."""

from __future__ import annotations

import os
from typing import Any

import pytest

from serving.control import cluster


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """ray.init and serve.start replaced by recorders; the settings removed from the env."""
    calls: dict[str, Any] = {}

    def init(**kwargs: Any) -> None:
        calls["init"] = {**kwargs, "environ": dict(os.environ)}

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", init)
    monkeypatch.setattr(cluster.serve, "start", lambda **kw: calls.setdefault("serve", kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in cluster.embedded_ray_env():
        monkeypatch.setenv(name, "")  # recorded, so that what connect() sets is undone
        monkeypatch.delenv(name)
    return calls


def test_embedded_ray_starts_with_the_lean_settings(recorded: dict[str, Any]) -> None:
    cluster.connect(num_cpus=2)
    environ = recorded["init"]["environ"]
    assert environ["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"
    assert environ["RAY_enable_metrics_collection"] == "0"
    assert recorded["init"]["include_dashboard"] is False
    assert recorded["init"]["_system_config"] == {"worker_niceness": 0}
    # A Ray of its own, even beside a cluster that plain ray.init() would join.
    assert recorded["init"]["address"] == "local"
    # Its surface closed: loopback only (Ray's single-machine mode), token authentication on.
    assert environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert environ["RAY_AUTH_MODE"] == "token"
    assert len(environ["RAY_AUTH_TOKEN"]) == 64
    assert cluster.embedded_ray_env()["RAY_AUTH_TOKEN"] != environ["RAY_AUTH_TOKEN"]


def test_the_environment_overrides_a_lean_setting(
    recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.1")
    cluster.connect(num_cpus=2)
    environ = recorded["init"]["environ"]
    assert environ["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.1"
    assert environ["RAY_enable_metrics_collection"] == "0"


def test_a_cluster_keeps_its_own_settings(recorded: dict[str, Any]) -> None:
    cluster.connect("ray://head:10001")
    assert recorded["init"] == {
        "address": "ray://head:10001",
        "logging_level": recorded["init"]["logging_level"],
        "environ": recorded["init"]["environ"],
    }
    for name in cluster.embedded_ray_env():
        assert name not in recorded["init"]["environ"]
