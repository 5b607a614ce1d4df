"""Unit tests run without Ray, GPUs or sockets."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("unit tests must not start Ray")

    monkeypatch.setattr("ray.init", refuse)
