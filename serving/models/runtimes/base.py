"""What the serving layer needs from a runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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
