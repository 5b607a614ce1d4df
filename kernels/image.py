"""Image preprocessing in one pass: ``uint8`` NHWC images → normalized ``float32`` or
``float16`` NCHW, with an optional bilinear resize and center crop.

Each output element is computed straight from the source pixels: where a resize is asked for,
bilinear interpolation with half-pixel centers (OpenCV's ``INTER_LINEAR``, PyTorch's
``interpolate(align_corners=False)`` without antialiasing); then the center crop; then
``(pixel * scale - mean[c]) / std[c]``. On the GPU the whole of it is one kernel, compiled once
per device and output dtype, that may write into a buffer the caller owns (a bound input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from kernels._backend import cupy, on_device


@dataclass(frozen=True)
class ImageSteps:
    mean: tuple[float, ...]
    """Per channel, in units of ``pixel * scale``."""
    std: tuple[float, ...]
    scale: float = 1 / 255
    resize: tuple[int, int] | None = None
    """(height, width) to resize to first; None: no resize."""
    crop: tuple[int, int] | None = None
    """(height, width) of the center crop, after any resize; None: no crop."""
    dtype: Literal["float32", "float16"] = "float32"

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel each")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not be 0")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size comes out as."""
        size = self.resize or (height, width)
        if self.crop is None:
            return size
        if self.crop[0] > size[0] or self.crop[1] > size[1]:
            raise ValueError(f"crop {list(self.crop)} is larger than the image {list(size)}")
        return self.crop

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel ``a, b`` with ``out = pixel * a + b``."""
        std = np.asarray(self.std, dtype=np.float64)
        mean = np.asarray(self.mean, dtype=np.float64)
        return (self.scale / std).astype(np.float32), (-mean / std).astype(np.float32)


def preprocess_images(images: Any, steps: ImageSteps, out: Any = None) -> Any:
    """``images`` (N, H, W, C) ``uint8`` → (N, C, h, w) of ``steps.dtype``; into ``out`` when
    given (same library, shape and dtype)."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 NHWC, got {images.dtype} {list(images.shape)}")
    channels = images.shape[3]
    if channels != len(steps.mean):
        raise ValueError(f"images have {channels} channels, mean and std {len(steps.mean)}")
    if on_device(images):
        return _device(images, steps, out)
    result = _host(images, steps)
    if out is None:
        return result
    out[...] = result
    return out


def _sources(size: int, resized: int, start: int, count: int) -> tuple[np.ndarray, ...]:
    """For ``count`` output positions from ``start`` of an axis resized from ``size`` to
    ``resized``: the two source indices each blends and the weight of the second."""
    position = (np.arange(start, start + count, dtype=np.float64) + 0.5) * (size / resized) - 0.5
    position = np.clip(position, 0, size - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    return low, high, (position - low).astype(np.float32)


def _window(steps: ImageSteps, height: int, width: int) -> tuple[int, int, int, int, int, int]:
    """(resized h, resized w, top, left, out h, out w)."""
    resized_h, resized_w = steps.resize or (height, width)
    out_h, out_w = steps.output_size(height, width)
    return resized_h, resized_w, (resized_h - out_h) // 2, (resized_w - out_w) // 2, out_h, out_w


def _host(images: np.ndarray, steps: ImageSteps) -> np.ndarray:
    _, height, width, _ = images.shape
    resized_h, resized_w, top, left, out_h, out_w = _window(steps, height, width)
    if steps.resize is None:
        pixels = images[:, top : top + out_h, left : left + out_w, :].astype(np.float32)
    else:
        y0, y1, fy = _sources(height, resized_h, top, out_h)
        x0, x1, fx = _sources(width, resized_w, left, out_w)
        fy, fx = fy[None, :, None, None], fx[None, None, :, None]
        rows0 = images[:, y0].astype(np.float32)
        rows1 = images[:, y1].astype(np.float32)
        top_row = rows0[:, :, x0] * (1 - fx) + rows0[:, :, x1] * fx
        bottom_row = rows1[:, :, x0] * (1 - fx) + rows1[:, :, x1] * fx
        pixels = top_row * (1 - fy) + bottom_row * fy
    a, b = steps.affine()
    normalized = pixels * a + b
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2), dtype=steps.dtype)


_SOURCE = r"""
#include <cuda_fp16.h>
extern "C" __global__ void preprocess(
    const unsigned char* images, OUT_T* out, const float* a, const float* b,
    long long total, int height, int width, int channels,
    int resized_h, int resized_w, int top, int left, int out_h, int out_w, int resize)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int x = i % out_w;
    int y = (i / out_w) % out_h;
    int c = (i / ((long long)out_w * out_h)) % channels;
    long long n = i / ((long long)out_w * out_h * channels);
    const unsigned char* image = images + n * height * width * channels;
    float value;
    if (resize) {
        // Source positions in double, as the NumPy reference computes them; weights in float.
        double sy = (y + top + 0.5) * ((double)height / resized_h) - 0.5;
        double sx = (x + left + 0.5) * ((double)width / resized_w) - 0.5;
        sy = fmin(fmax(sy, 0.0), height - 1.0);
        sx = fmin(fmax(sx, 0.0), width - 1.0);
        int y0 = (int)sy, x0 = (int)sx;
        int y1 = min(y0 + 1, height - 1), x1 = min(x0 + 1, width - 1);
        float fy = (float)(sy - y0), fx = (float)(sx - x0);
        float p00 = image[((long long)y0 * width + x0) * channels + c];
        float p01 = image[((long long)y0 * width + x1) * channels + c];
        float p10 = image[((long long)y1 * width + x0) * channels + c];
        float p11 = image[((long long)y1 * width + x1) * channels + c];
        float upper = p00 * (1.0f - fx) + p01 * fx;
        float lower = p10 * (1.0f - fx) + p11 * fx;
        value = upper * (1.0f - fy) + lower * fy;
    } else {
        value = image[((long long)(y + top) * width + (x + left)) * channels + c];
    }
    out[i] = (OUT_T)(value * a[c] + b[c]);
}
"""
_KERNELS: dict[tuple[int, str], Any] = {}
"""Compiled kernels by (device, output dtype): each compiles once, on first use."""
_CONSTANTS: dict[tuple[int, ImageSteps], tuple[Any, Any]] = {}


def _kernel(cp: Any, dtype: str) -> Any:
    key = (cp.cuda.runtime.getDevice(), dtype)
    kernel = _KERNELS.get(key)
    if kernel is None:
        out_type = "float" if dtype == "float32" else "__half"
        kernel = cp.RawKernel(_SOURCE.replace("OUT_T", out_type), "preprocess")
        _KERNELS[key] = kernel
    return kernel


def _device(images: Any, steps: ImageSteps, out: Any) -> Any:
    cp = cupy()
    images = cp.ascontiguousarray(images)
    count, height, width, channels = images.shape
    resized_h, resized_w, top, left, out_h, out_w = _window(steps, height, width)
    shape = (count, channels, out_h, out_w)
    if out is None:
        out = cp.empty(shape, dtype=steps.dtype)
    elif out.shape != shape or out.dtype != np.dtype(steps.dtype) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous {steps.dtype} array of shape {list(shape)}")
    device = cp.cuda.runtime.getDevice()
    constants = _CONSTANTS.get((device, steps))
    if constants is None:
        constants = tuple(cp.asarray(v) for v in steps.affine())
        _CONSTANTS[(device, steps)] = constants
    total = out.size
    if total:
        threads = 256
        _kernel(cp, steps.dtype)(
            ((total + threads - 1) // threads,), (threads,),
            (images, out, constants[0], constants[1], np.int64(total),
             np.int32(height), np.int32(width), np.int32(channels),
             np.int32(resized_h), np.int32(resized_w), np.int32(top), np.int32(left),
             np.int32(out_h), np.int32(out_w), np.int32(steps.resize is not None)),
        )  # fmt: skip
    return out
