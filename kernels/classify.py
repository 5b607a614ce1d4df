"""Classifier postprocessing: softmax over the last axis, then the ``k`` largest, in order."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels._backend import module_for


def softmax_topk(logits: Any, k: int) -> tuple[Any, Any]:
    """``logits`` (N, classes) → (indices, probabilities), each (N, k), most probable first
    (ties: the lower index first). Runs where ``logits`` lives."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {list(logits.shape)}")
    classes = logits.shape[1]
    if not 1 <= k <= classes:
        raise ValueError(f"k must be between 1 and the {classes} classes, got {k}")
    xp = module_for(logits)
    values = logits.astype(xp.float32, copy=False)
    shifted = xp.exp(values - values.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    order = xp.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    top = xp.take_along_axis(probabilities, order, axis=1)
    return order.astype(np.int64, copy=False), top
