"""Small runtimes for unit tests: they stand in for ONNX Runtime, never for a server."""

from __future__ import annotations

import numpy as np

from serving.runtimes.base import GraphTensor


class SumRuntime:
    """y = x.sum(axis=1), over a batch."""

    @property
    def providers(self) -> list[str]:
        return ["FakeProvider"]

    def __init__(self) -> None:
        self.calls = 0

    @property
    def inputs(self) -> list[GraphTensor]:
        return [GraphTensor("x", "FP32", (-1, 3))]

    @property
    def outputs(self) -> list[GraphTensor]:
        return [GraphTensor("y", "FP32", (-1,))]

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        self.calls += 1
        return [inputs["x"].sum(axis=1)]

    def close(self) -> None:
        pass


class ErrorRuntime(SumRuntime):
    """Fails every inference after warm-up, as a faulty model would."""

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("kernel exploded at /secret/path")
        return super().infer(inputs, outputs)
