"""Raw tensor bytes, shared by the HTTP binary extension and gRPC ``raw_*_contents``.

Fixed-size types are little-endian, row-major. BYTES elements are each a 4-byte little-endian
length followed by that many bytes.
"""

from __future__ import annotations

import struct
import sys

import numpy as np

from serving.errors import InvalidInputError
from serving.protocol.datatypes import numpy_dtype
from serving.protocol.limits import DEFAULT_LIMITS, InputLimits

_LENGTH = struct.Struct("<I")
_BIG_ENDIAN_HOST = sys.byteorder == "big"


def decode(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    buffer: bytes | memoryview,
    *,
    count: int | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Numpy view of ``buffer`` (no copy for fixed-size types). ``count``: the shape's element
    count, when the caller has checked it against ``limits`` already."""
    if count is None:
        shape, count = limits.shape(name, shape)
    if datatype == "BYTES":
        return _decode_bytes(name, shape, count, memoryview(buffer), limits)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInputError(
            f"input '{name}': {len(buffer)} bytes of data for shape {list(shape)} {datatype}, "
            f"expected {expected}"
        )
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)


def _decode_bytes(
    name: str, shape: tuple[int, ...], count: int, view: memoryview, limits: InputLimits
) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    end = len(view)
    largest = limits.max_bytes_element
    while offset < end:
        if len(items) == count:  # stop at the first element the shape has no room for
            raise InvalidInputError(
                f"input '{name}': more BYTES elements than the {count} of shape {list(shape)}"
            )
        if offset + 4 > end:
            raise InvalidInputError(f"input '{name}': truncated BYTES element length at {offset}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if length > largest:
            limits.bytes_element(name, length)
        if offset + length > end:
            raise InvalidInputError(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes, "
                f"only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInputError(
            f"input '{name}': {len(items)} BYTES elements for shape {list(shape)}, expected {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def encode(data: np.ndarray, datatype: str) -> bytes:
    """Row-major raw bytes of ``data``."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in data.reshape(-1):
            raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if data.dtype.byteorder == ">" or (data.dtype.byteorder == "=" and _BIG_ENDIAN_HOST):
        data = data.astype(data.dtype.newbyteorder("<"))
    return data.tobytes()  # row-major, whatever the array's strides
