"""Straightforward references the kernels are checked against, written from the definitions
(loops over pixels), shared by the unit, integration and GPU tests."""

from __future__ import annotations

import math

import numpy as np

from kernels import ImageSteps


def reference(images: np.ndarray, steps: ImageSteps) -> np.ndarray:
    """Pixel by pixel: half-pixel-center bilinear resize, center crop, normalize, NCHW."""
    count, height, width, channels = images.shape
    resized_h, resized_w = steps.resize or (height, width)
    out_h, out_w = steps.crop or (resized_h, resized_w)
    top, left = (resized_h - out_h) // 2, (resized_w - out_w) // 2
    out = np.zeros((count, channels, out_h, out_w), dtype=np.float64)
    for n in range(count):
        for c in range(channels):
            for y in range(out_h):
                for x in range(out_w):
                    sy = min(max((y + top + 0.5) * height / resized_h - 0.5, 0), height - 1)
                    sx = min(max((x + left + 0.5) * width / resized_w - 0.5, 0), width - 1)
                    y0, x0 = math.floor(sy), math.floor(sx)
                    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                    fy, fx = sy - y0, sx - x0
                    pixel = (
                        images[n, y0, x0, c] * (1 - fy) * (1 - fx)
                        + images[n, y0, x1, c] * (1 - fy) * fx
                        + images[n, y1, x0, c] * fy * (1 - fx)
                        + images[n, y1, x1, c] * fy * fx
                    )
                    out[n, c, y, x] = (pixel * steps.scale - steps.mean[c]) / steps.std[c]
    return out
