"""The kernels' NumPy paths against straightforward references: loops over pixels and rows,
written from the definitions, on fresh random inputs of odd sizes."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from kernels import ImageSteps, preprocess_images, softmax_topk
from kernels._backend import GPU_EXTRA, cupy, on_device
from tests.references import reference

RNG = np.random.default_rng(20261204)


IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.mark.parametrize(
    ("size", "steps"),
    [
        ((13, 17), ImageSteps(**IMAGENET)),
        ((13, 17), ImageSteps(**IMAGENET, crop=(7, 9))),
        ((13, 17), ImageSteps(**IMAGENET, resize=(10, 11), crop=(5, 9))),
        ((9, 7), ImageSteps(**IMAGENET, resize=(23, 19))),  # upscaling
        ((31, 29), ImageSteps(**IMAGENET, resize=(6, 5), dtype="float16")),
        ((8, 8), ImageSteps(mean=(0.5,), std=(0.25,), resize=(5, 3), crop=(3, 3))),
    ],
    ids=["normalize", "crop", "resize-crop", "upscale", "fp16", "one-channel"],
)
def test_image_preprocessing_matches_the_reference(
    size: tuple[int, int], steps: ImageSteps
) -> None:
    channels = len(steps.mean)
    images = RNG.integers(0, 256, size=(3, *size, channels), dtype=np.uint8)
    result = preprocess_images(images, steps)
    expected = reference(images, steps)
    assert result.dtype == np.dtype(steps.dtype) and result.flags.c_contiguous
    assert result.shape == expected.shape
    tolerance = 2e-3 if steps.dtype == "float16" else 1e-5
    np.testing.assert_allclose(result, expected, rtol=tolerance, atol=tolerance)


def test_image_preprocessing_writes_into_a_given_buffer() -> None:
    steps = ImageSteps(**IMAGENET, resize=(6, 6), crop=(4, 4))
    images = RNG.integers(0, 256, size=(2, 11, 9, 3), dtype=np.uint8)
    out = np.empty((2, 3, 4, 4), dtype=np.float32)
    assert preprocess_images(images, steps, out=out) is out
    np.testing.assert_allclose(out, reference(images, steps), rtol=1e-5, atol=1e-5)


def test_image_preprocessing_refuses_what_it_cannot_do() -> None:
    steps = ImageSteps(**IMAGENET, crop=(20, 20))
    with pytest.raises(ValueError, match="uint8 NHWC"):
        preprocess_images(np.zeros((1, 4, 4, 3), np.float32), steps)
    with pytest.raises(ValueError, match="images have 1 channels, mean and std 3"):
        preprocess_images(np.zeros((1, 4, 4, 1), np.uint8), steps)
    with pytest.raises(ValueError, match=r"crop \[20, 20\] is larger than the image \[4, 4\]"):
        preprocess_images(np.zeros((1, 4, 4, 3), np.uint8), steps)
    with pytest.raises(ValueError, match="one value per channel"):
        ImageSteps(mean=(0.5, 0.5), std=(1.0,))


@pytest.mark.parametrize(("rows", "classes", "k"), [(1, 1, 1), (5, 11, 3), (7, 1000, 5)])
def test_softmax_topk_matches_the_reference(rows: int, classes: int, k: int) -> None:
    logits = (RNG.standard_normal((rows, classes)) * 8).astype(np.float32)
    indices, scores = softmax_topk(logits, k)
    assert indices.shape == scores.shape == (rows, k) and indices.dtype == np.int64
    for row in range(rows):
        exps = [math.exp(v - max(logits[row])) for v in logits[row]]
        probabilities = [e / sum(exps) for e in exps]
        best = sorted(range(classes), key=lambda i: (-probabilities[i], i))[:k]
        assert indices[row].tolist() == best
        np.testing.assert_allclose(scores[row], [probabilities[i] for i in best], rtol=1e-5)


def test_softmax_topk_refuses_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be between 1 and the 4 classes"):
        softmax_topk(np.zeros((2, 4), np.float32), 5)


def test_host_arrays_never_import_cupy() -> None:
    """The NumPy paths run without CuPy ever being imported (a machine without a GPU)."""
    script = (
        "import sys, numpy as np, kernels\n"
        "kernels.softmax_topk(np.ones((2, 3), np.float32), 2)\n"
        "kernels.preprocess_images(np.ones((1, 4, 4, 3), np.uint8),\n"
        "    kernels.ImageSteps(mean=(0, 0, 0), std=(1, 1, 1), resize=(3, 3)))\n"
        "assert 'cupy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert not on_device(np.zeros(3))


def test_a_device_array_without_cupy_says_how_to_get_it() -> None:
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    with pytest.raises(ImportError, match=re.escape(GPU_EXTRA)):
        cupy()
