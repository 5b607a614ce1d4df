"""A runtime with a model config's processing steps around it: what clients send converted
before the graph runs (``uint8`` images to normalized NCHW floats), outputs derived after it
(softmax + top-k). It is a :class:`Runtime` like any other, so signatures, batching and
statistics see only the tensors clients exchange."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import ImageSteps, preprocess_images, softmax_topk
from kernels._backend import cupy
from serving.config import ImagePreprocess, ModelConfig, SoftmaxTopK
from serving.errors import InvalidInputError
from serving.models.runtimes.base import GraphTensor, Runtime

INDICES = "_topk_indices"
SCORES = "_topk_scores"


def _cupy() -> bool:
    try:
        cupy()
    except ImportError:
        return False
    return True


class ProcessingError(ValueError):
    """The processing steps do not fit the graph."""


def with_processing(runtime: Runtime, config: ModelConfig) -> Runtime:
    """``runtime`` itself when the config names no steps, else wrapped in them."""
    pre = config.preprocess.image if config.preprocess is not None else None
    post = config.postprocess.softmax_topk if config.postprocess is not None else None
    if pre is None and post is None:
        return runtime
    return Processed(runtime, pre, post)


def _named(tensors: list[GraphTensor], name: str, what: str) -> GraphTensor:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    names = ", ".join(t.name for t in tensors)
    raise ProcessingError(f"{what} '{name}' is not in the graph ({names})")


class Processed:
    def __init__(
        self, inner: Runtime, image: ImagePreprocess | None, topk: SoftmaxTopK | None
    ) -> None:
        self._inner = inner
        self._image = image
        self._topk = topk
        self._inputs = list(inner.inputs)
        self._outputs = list(inner.outputs)
        self._steps: ImageSteps | None = None
        device = getattr(inner, "device", ("cpu", 0))
        self._on_gpu = device[0] == "cuda" and getattr(inner, "io_binding", False) and _cupy()
        """Preprocess on the GPU: the session runs there and takes device inputs."""
        self.sample_sizes: dict[str, tuple[int, ...]] = {}
        """Per input, the smallest non-batch dims it takes (what a warm-up sends)."""
        if image is not None:
            self._prepare_image(image)
        if topk is not None:
            self._prepare_topk(topk)

    def _prepare_image(self, image: ImagePreprocess) -> None:
        tensor = _named(self._inputs, image.input, "preprocess input")
        if tensor.datatype not in ("FP32", "FP16") or len(tensor.shape) != 4:
            raise ProcessingError(
                f"preprocess input '{image.input}' must be (N, C, h, w) FP32 or FP16, the graph "
                f"has {tensor.datatype} {list(tensor.shape)}"
            )
        batch, channels, height, width = tensor.shape
        if channels != len(image.mean):
            raise ProcessingError(
                f"preprocess input '{image.input}' has {channels} channels, mean and std "
                f"{len(image.mean)}"
            )
        made = image.crop or image.resize
        if made is not None and -1 not in (height, width) and tuple(made) != (height, width):
            raise ProcessingError(
                f"preprocess makes {list(made)} images, the graph takes {[height, width]}"
            )
        self._steps = ImageSteps(
            mean=image.mean, std=image.std, scale=image.scale, resize=image.resize,
            crop=image.crop, dtype="float32" if tensor.datatype == "FP32" else "float16",
        )  # fmt: skip
        # What clients send: any size when a resize or crop makes the graph's, else its own.
        sent = (-1, -1) if image.resize or image.crop else (height, width)
        served = GraphTensor(tensor.name, "UINT8", (batch, *sent, channels))
        self._inputs = [served if t.name == tensor.name else t for t in self._inputs]
        smallest = image.crop if image.resize is None and image.crop else (1, 1)
        self.sample_sizes = {tensor.name: (*smallest, channels)}

    def _prepare_topk(self, topk: SoftmaxTopK) -> None:
        tensor = _named(self._outputs, topk.output, "postprocess output")
        if tensor.datatype not in ("FP32", "FP16", "FP64") or len(tensor.shape) != 2:
            raise ProcessingError(
                f"postprocess output '{topk.output}' must be (N, classes) floats, the graph "
                f"has {tensor.datatype} {list(tensor.shape)}"
            )
        classes = tensor.shape[1]
        if classes != -1 and topk.k > classes:
            raise ProcessingError(f"softmax_topk k {topk.k} is more than the {classes} classes")
        batch = tensor.shape[0]
        self._outputs += [
            GraphTensor(topk.output + INDICES, "INT64", (batch, topk.k)),
            GraphTensor(topk.output + SCORES, "FP32", (batch, topk.k)),
        ]

    @property
    def inputs(self) -> list[GraphTensor]:
        return self._inputs

    @property
    def outputs(self) -> list[GraphTensor]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        return self._inner.providers

    @property
    def fallback(self) -> str | None:
        return getattr(self._inner, "fallback", None)

    @property
    def cuda_graphs(self) -> str | None:
        return getattr(self._inner, "cuda_graphs", None)

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        feed = inputs
        if self._image is not None and self._steps is not None:
            name = self._image.input
            images = inputs[name]
            if self._on_gpu:  # a quarter of the bytes cross the bus; the kernel does the rest
                images = cupy().asarray(images)
            try:
                feed = {**inputs, name: preprocess_images(images, self._steps)}
            except ValueError as error:
                raise InvalidInputError(f"input '{name}': {error}") from None
        topk = self._topk
        if topk is None:
            return self._inner.infer(feed, outputs)
        derived = {topk.output + INDICES, topk.output + SCORES}
        graph_names = [n for n in outputs if n not in derived]
        if derived & set(outputs) and topk.output not in graph_names:
            graph_names.append(topk.output)
        results: dict[str, Any] = dict(zip(graph_names, self._inner.infer(feed, graph_names),
                                           strict=True))  # fmt: skip
        if derived & set(outputs):
            indices, scores = softmax_topk(results[topk.output], topk.k)
            results[topk.output + INDICES] = indices
            results[topk.output + SCORES] = scores
        return [results[n] for n in outputs]

    def close(self) -> None:
        self._inner.close()
