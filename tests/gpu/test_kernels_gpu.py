"""The CuPy kernels against their NumPy references on the device, fresh random inputs of odd
sizes; and the hand-off of a device buffer to ONNX Runtime without a copy through the host."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kernels import ImageSteps, preprocess_images, softmax_topk

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
CASES = [
    ((1, 13, 17), ImageSteps(**IMAGENET)),
    ((3, 13, 17), ImageSteps(**IMAGENET, crop=(7, 9))),
    ((5, 37, 41), ImageSteps(**IMAGENET, resize=(29, 31), crop=(23, 19))),
    ((2, 9, 7), ImageSteps(**IMAGENET, resize=(23, 19))),
    ((64, 224, 224), ImageSteps(**IMAGENET, resize=(256, 256), crop=(224, 224))),
    ((4, 31, 29), ImageSteps(**IMAGENET, resize=(6, 5), dtype="float16")),
]


@pytest.mark.parametrize(("size", "steps"), CASES, ids=[str(c[0]) for c in CASES])
def test_preprocessing_kernel_matches_numpy(
    cp: Any, size: tuple[int, ...], steps: ImageSteps
) -> None:
    images = np.random.default_rng().integers(0, 256, size=(*size, 3), dtype=np.uint8)
    expected = preprocess_images(images, steps).astype(np.float64)
    result = preprocess_images(cp.asarray(images), steps)
    assert isinstance(result, cp.ndarray) and result.dtype == np.dtype(steps.dtype)
    got = cp.asnumpy(result).astype(np.float64)
    if steps.dtype == "float16":
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    else:
        error = np.abs(got - expected) / np.maximum(np.abs(expected), 1.0)
        assert error.max() < 1e-5, error.max()


def test_preprocessing_kernel_writes_into_the_callers_buffer(cp: Any) -> None:
    steps = ImageSteps(**IMAGENET, resize=(10, 10), crop=(8, 8))
    images = cp.asarray(np.random.default_rng().integers(0, 256, (3, 21, 19, 3), dtype=np.uint8))
    out = cp.empty((3, 3, 8, 8), dtype=cp.float32)
    assert preprocess_images(images, steps, out=out) is out
    np.testing.assert_allclose(cp.asnumpy(out), preprocess_images(cp.asnumpy(images), steps),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize(("rows", "classes", "k"), [(1, 3, 1), (7, 1000, 5), (33, 17, 17)])
def test_softmax_topk_matches_numpy(cp: Any, rows: int, classes: int, k: int) -> None:
    logits = (np.random.default_rng().standard_normal((rows, classes)) * 8).astype(np.float32)
    indices, scores = softmax_topk(cp.asarray(logits), k)
    want_indices, want_scores = softmax_topk(logits, k)
    np.testing.assert_array_equal(cp.asnumpy(indices), want_indices)
    np.testing.assert_allclose(cp.asnumpy(scores), want_scores, rtol=1e-5, atol=1e-7)


def test_dlpack_hands_a_device_buffer_to_onnxruntime_without_a_copy(cp: Any) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    array = cp.arange(12, dtype=cp.float32).reshape(3, 4)
    value = ort.OrtValue.from_dlpack(array.__dlpack__())
    assert value.device_name().lower() == "cuda"
    assert value.data_ptr() == array.data.ptr  # the same device memory, not a copy
