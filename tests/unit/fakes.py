"""Small runtimes for unit tests: they stand in for ONNX Runtime, never for a server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np

from serving.models.runtimes.base import GraphTensor, ModelFile


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


class FakeClock:
    """Time that moves only when a test calls ``advance``."""

    def __init__(self) -> None:
        self.t = 0.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> None:
        if timeout_s is not None and timeout_s <= 0:
            return
        loop = asyncio.get_running_loop()
        timer: asyncio.Future[None] = loop.create_future()
        if timeout_s is not None:
            self._timers.append((self.t + timeout_s, timer))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
            self._timers = [(d, f) for d, f in self._timers if f is not timer]

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for deadline, timer in self._timers:
            if deadline <= self.t and not timer.done():
                timer.set_result(None)


class FakeModel:
    """An ``execute`` for the batcher: y = 2x; fails on negative input; can be held shut."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        await self.gate.wait()
        x = inputs["x"]
        self.batches.append(int(x.shape[0]))
        if (x < 0).any():
            raise ValueError("negative input")
        return [x * 2, x.sum(axis=tuple(range(1, x.ndim)))]


class GatedRuntime(SumRuntime):
    """A SumRuntime whose inferences (after warm-up) wait for ``gate``; records its closing."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False
        self.running = 0

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        assert not self.closed, "inference on a closed session"
        self.running += 1
        try:
            self.gate.wait(10)
            return super().infer(inputs, outputs)
        finally:
            self.running -= 1

    def close(self) -> None:
        self.closed = True


class FakeFiles:
    """A runtime factory over fake model files: a file whose bytes start with ``corrupt``
    fails to load, as a broken ONNX file would; every session opened is kept."""

    def __init__(self) -> None:
        self.opened: list[GatedRuntime] = []

    def __call__(self, source: ModelFile, config: object) -> GatedRuntime:
        if source.data.startswith(b"corrupt"):
            raise ValueError(f"protobuf parsing failed for {source.path}")
        runtime = GatedRuntime()
        self.opened.append(runtime)
        return runtime


def write_model(
    repo: Path, name: str, version: int, content: bytes = b"", config: str = ""
) -> Path:
    """``repo/name/version/model.onnx`` holding ``content`` (a fake: FakeFiles opens it)."""
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content or f"{name} {version}".encode())
    if config:
        (repo / name / "config.yaml").write_text(config)
    return path
