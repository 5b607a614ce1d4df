"""GPU tests: marked ``gpu``, and skipped, with the reason, where there is no CUDA device."""

from __future__ import annotations

from typing import Any

import pytest


def _cupy_or_reason() -> tuple[Any, str]:
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed (the gpu extra)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, no device
        return None, f"no CUDA device ({error})"
    return (cupy, "") if count else (None, "no CUDA device")


CUPY, REASON = _cupy_or_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/gpu/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if CUPY is None:
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture
def cp() -> Any:
    return CUPY
