"""Image preprocessing and softmax + top-k: the fused CuPy kernels against their NumPy paths,
side by side in one run (``python -m benchmarks.gpu_kernels``; needs a CUDA device and the gpu
extra). Prints a table: per batch size, milliseconds per batch on each and the ratio."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from kernels import ImageSteps, preprocess_images, softmax_topk
from kernels._backend import cupy

STEPS = ImageSteps(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=(256, 256),
                   crop=(224, 224))  # fmt: skip


def no_sync() -> None:
    pass


def timed(run: Callable[[], object], sync: Callable[[], None], repeats: int = 20) -> float:
    run()
    sync()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        sync()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def main() -> None:
    cp = cupy()

    def device_sync() -> None:
        cp.cuda.Device().synchronize()

    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    print("| step | batch | NumPy ms | CuPy ms | ratio |\n|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for batch in (1, 8, 64):
        host = rng.integers(0, 256, (batch, 300, 400, 3), dtype=np.uint8)
        device = cp.asarray(host)
        out = cp.empty((batch, 3, 224, 224), dtype=cp.float32)
        numpy_ms = timed(partial(preprocess_images, host, STEPS), no_sync, repeats=3)
        cupy_ms = timed(partial(preprocess_images, device, STEPS, out=out), device_sync)
        print(f"| uint8 300x400 to resize 256, crop 224 | {batch} | {numpy_ms:.2f} | "
              f"{cupy_ms:.3f} | {numpy_ms / cupy_ms:.0f}x |")  # fmt: skip
        logits = rng.standard_normal((batch, 1000)).astype(np.float32)
        numpy_ms = timed(partial(softmax_topk, logits, 5), no_sync)
        cupy_ms = timed(partial(softmax_topk, cp.asarray(logits), 5), device_sync)
        print(f"| softmax + top-5 of 1000 | {batch} | {numpy_ms:.3f} | {cupy_ms:.3f} | "
              f"{numpy_ms / cupy_ms:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
