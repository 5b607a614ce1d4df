"""Which array library runs a kernel: NumPy for host arrays, CuPy for device arrays. CuPy is
imported only when a device array shows up, so the package imports on machines without a GPU."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

GPU_EXTRA = "install the gpu extra for CuPy and CUDA: pip install 'serving[gpu]'"


def on_device(array: Any) -> bool:
    """Whether ``array`` is a CuPy array (told by its type, without importing CuPy)."""
    return type(array).__module__.split(".", 1)[0] == "cupy"


def cupy() -> ModuleType:
    """CuPy, or an ImportError saying how to get it."""
    try:
        cp: ModuleType = importlib.import_module("cupy")
    except ImportError as error:
        raise ImportError(f"CuPy is not installed: {GPU_EXTRA}") from error
    return cp


def module_for(array: Any) -> ModuleType:
    return cupy() if on_device(array) else np
