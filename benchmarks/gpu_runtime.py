"""The GPU path side by side in one run (``python -m benchmarks.gpu_runtime``; needs a CUDA
device and the gpu extra): a CNN at 224x224 fed ``float32`` against ``uint8`` with GPU
preprocessing, IO binding off and on, CUDA graphs off and on, each beside a plain in-process
ONNX Runtime session on the same GPU. Prints a table: per batch size, milliseconds per batch
and the ratio to the plain session."""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from serving.config import ModelConfig
from serving.models.runtimes.base import ModelFile
from serving.models.runtimes.onnx import GpuSettings, ONNXRuntime, SessionOptions
from serving.models.runtimes.processed import with_processing

BATCHES = (1, 8, 32)
PREPROCESS = {"preprocess": {"image": {"input": "input", "mean": [0.485, 0.456, 0.406],
                                       "std": [0.229, 0.224, 0.225], "resize": [256, 256],
                                       "crop": [224, 224]}}}  # fmt: skip


def cnn224() -> onnx.ModelProto:
    """Four stride-2 3x3 convolutions (3 → 32 → 64 → 128 → 256), pooling, a 1000-way dense
    layer; seeded random weights."""
    rng = np.random.default_rng(0)
    channels = [3, 32, 64, 128, 256]
    nodes, weights, previous = [], [], "input"
    for layer, (cin, cout) in enumerate(itertools.pairwise(channels)):
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{layer}"))
        nodes += [
            helper.make_node(
                "Conv", [previous, f"w{layer}"], [f"c{layer}"], pads=[1, 1, 1, 1], strides=[2, 2]
            ),
            helper.make_node("Relu", [f"c{layer}"], [f"r{layer}"]),
        ]
        previous = f"r{layer}"
    dense = (rng.standard_normal((1000, 256)) / 16).astype(np.float32)
    weights.append(numpy_helper.from_array(dense, "dense"))
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "dense"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn224",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 1000])],
        weights,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def timed(run: Callable[[], object], repeats: int = 30) -> float:
    for _ in range(3):
        run()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()  # every variant returns host arrays: synchronous
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        onnx.save_model(cnn224(), path)
        source = ModelFile.read(path)
        options = SessionOptions()  # one ONNX Runtime thread, as each of ours
        plain_options = ort.SessionOptions()
        plain_options.intra_op_num_threads = options.intra_op_threads
        plain = ort.InferenceSession(source.data, plain_options,
                                     providers=["CUDAExecutionProvider"])  # fmt: skip

        def runtime(**gpu: object) -> ONNXRuntime:
            return ONNXRuntime(source, providers=("cuda",), options=options,
                               gpu=GpuSettings(max_batch_size=max(BATCHES), **gpu))  # type: ignore[arg-type]  # fmt: skip

        unbound, bound, graphed = runtime(io_binding=False), runtime(), runtime(graphs=True)
        print(f"providers: {bound.providers}; CUDA graphs: {graphed.cuda_graphs}")
        preprocessing = ModelConfig.model_validate(PREPROCESS)
        images_bound = with_processing(bound, preprocessing)
        images_graphed = with_processing(graphed, preprocessing)
        print("| variant | batch | ms per batch | vs plain ONNX Runtime |\n|---|---|---|---|")
        rng = np.random.default_rng(1)
        for batch in BATCHES:
            floats = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
            raw = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
            baseline = timed(lambda: plain.run(["logits"], {"input": floats}))  # noqa: B023
            variants = {
                "plain ONNX Runtime, float32": baseline,
                "float32, IO binding off": timed(
                    lambda: unbound.infer({"input": floats}, ["logits"])  # noqa: B023
                ),
                "float32, IO binding": timed(lambda: bound.infer({"input": floats}, ["logits"])),  # noqa: B023
                "float32, IO binding + CUDA graphs": timed(
                    lambda: graphed.infer({"input": floats}, ["logits"])  # noqa: B023
                ),
                "uint8 + GPU preprocessing, IO binding": timed(
                    lambda: images_bound.infer({"input": raw}, ["logits"])  # noqa: B023
                ),
                "uint8 + GPU preprocessing + CUDA graphs": timed(
                    lambda: images_graphed.infer({"input": raw}, ["logits"])  # noqa: B023
                ),
            }
            for name, ms in variants.items():
                print(f"| {name} | {batch} | {ms:.3f} | {baseline / ms:.2f}x |")


if __name__ == "__main__":
    main()
