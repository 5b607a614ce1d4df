"""How much one request may ask a replica to allocate, checked before the allocation.

A request body is bounded by its byte limit, but decoding it can multiply that: a JSON number
becomes a Python object of 24 bytes and more, a BYTES element one of 33 bytes and more, and a
declared shape can name more elements than the body could ever hold. These limits are what the
decoders check first, each failure a :class:`LimitExceededError` (413 / RESOURCE_EXHAUSTED)
that names the limit and the setting that raises it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.errors import InvalidInputError, LimitExceededError
from serving.protocol.datatypes import NUMPY_DTYPES

MAX_DIMS = 64
"""NumPy's (and ONNX Runtime's) most dimensions a tensor can have."""
OFFLOAD_BYTES = 1024 * 1024
"""Requests larger than this are decoded in a worker thread, off the event loop that answers
every other request (and the health checks)."""
OFFLOAD_CONCURRENCY = 2
"""Large requests decoded at once: each may expand to several times its size while decoded."""


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_tensor_elements: int = 1 << 26
    """Elements one input may declare (64 Mi: a 64 MiB UINT8 tensor)."""
    max_request_elements: int = 1 << 27
    """Elements all of a request's inputs may declare together."""
    max_object_elements: int = 1 << 22
    """JSON values, BYTES elements and gRPC typed ``contents`` elements in one request: each
    costs tens of bytes decoded, where the binary extension and raw contents cost nothing."""
    max_bytes_element: int = 16 * 1024 * 1024
    """Bytes one BYTES element may hold."""

    def shape(self, name: str, dims: list[int] | tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """``dims`` as a shape and its element count, or the error that refuses it: checked
        dim by dim, so that a product that would overflow stops at the limit."""
        if len(dims) > MAX_DIMS:
            raise InvalidInputError(
                f"input '{name}' has {len(dims)} dims, the most a tensor can have is {MAX_DIMS}"
            )
        count = 1
        zero = False
        for dim in dims:
            if dim < 0:
                raise InvalidInputError(f"input '{name}': shape has a negative dim ({dim})")
            if dim == 0:
                zero = True
                continue
            count *= dim
            if count > self.max_tensor_elements:
                raise LimitExceededError(
                    f"input '{name}' declares more than {self.max_tensor_elements} elements "
                    f"(shape {_shown(dims)})",
                    setting="max_tensor_elements",
                )
        return tuple(int(d) for d in dims), 0 if zero else count

    def request(self, elements: int, objects: int) -> None:
        """Refuse a request whose inputs together pass the per-request limits."""
        if elements > self.max_request_elements:
            raise LimitExceededError(
                f"request declares {elements} elements, more than the limit of "
                f"{self.max_request_elements}",
                setting="max_request_elements",
            )
        self.objects(objects)

    def objects(self, count: int, what: str = "JSON values, BYTES and typed elements") -> None:
        if count > self.max_object_elements:
            raise LimitExceededError(
                f"request holds {count} {what}, more than the limit of "
                f"{self.max_object_elements} (send large tensors as binary data: the HTTP binary "
                "extension, gRPC raw contents)",
                setting="max_object_elements",
            )

    def bytes_element(self, name: str, size: int) -> None:
        if size > self.max_bytes_element:
            raise LimitExceededError(
                f"input '{name}': a BYTES element of {size} bytes, more than the limit of "
                f"{self.max_bytes_element}",
                setting="max_bytes_element",
            )


def _shown(dims: list[int] | tuple[int, ...]) -> str:
    text = str(list(dims))
    return text if len(text) <= 80 else text[:80] + "…]"


DEFAULT_LIMITS = InputLimits()


def out_of_range(name: str, datatype: str, values: Iterable[int]) -> InvalidInputError:
    """The error for the first of ``values`` that ``datatype`` (an integer type) cannot hold."""
    info = np.iinfo(NUMPY_DTYPES[datatype])
    for index, value in enumerate(values):
        if not info.min <= value <= info.max:
            return InvalidInputError(
                f"input '{name}': element {index} ({shown(value)}) is out of range for "
                f"{datatype} [{info.min}, {info.max}]"
            )
    return InvalidInputError(f"input '{name}': a value is out of range for {datatype}")


def shown(value: Any) -> str:
    """A value from a request as a message quotes it: short, and an integer too long to print
    by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value) if isinstance(value, float) else orjson.dumps(value).decode()
    except TypeError:
        text = "…"
    return text if len(text) <= 40 else text[:40] + "…"
