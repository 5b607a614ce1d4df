"""What the serving layer needs from a runtime."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True, eq=False)
class ModelFile:
    """A model file as it is loaded: its bytes, read once, are what is hashed and what the
    runtime opens (a file changed in between cannot be served under the old hash); ``root`` is
    the folder that anything the model refers to (ONNX external data) must stay inside."""

    path: Path
    data: bytes
    root: Path

    @classmethod
    def read(cls, path: Path, root: Path | None = None) -> ModelFile:
        return cls(path, path.read_bytes(), root or path.parent)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @functools.cached_property
    def proto(self) -> Any:
        """The ONNX model the bytes hold (external data not loaded), parsed once for every
        check that reads the graph; None when they are no ONNX model (ONNX Runtime says why)."""
        import onnx

        try:
            return onnx.load_model_from_string(self.data)
        except Exception:
            return None


@dataclass(frozen=True)
class GraphTensor:
    """A tensor as the model graph declares it; -1 marks a dimension of free size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class Runtime(Protocol):
    """A loaded model version.

    ``infer`` blocks and is thread-safe; callers run it off the event loop.
    """

    @property
    def inputs(self) -> list[GraphTensor]: ...

    @property
    def outputs(self) -> list[GraphTensor]: ...

    @property
    def providers(self) -> list[str]: ...

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]: ...

    def close(self) -> None: ...
