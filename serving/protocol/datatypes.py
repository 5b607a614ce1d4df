"""The v2 datatypes and how they map to numpy, ONNX and Triton's config names."""

from __future__ import annotations

from typing import Final

import numpy as np

from serving.errors import InvalidInputError

NUMPY_DTYPES: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
DATATYPES: Final[tuple[str, ...]] = tuple(NUMPY_DTYPES)

# ONNX Runtime reports element types as "tensor(<onnx type>)".
_ORT_TO_V2: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        raise InvalidInputError(
            f"unsupported datatype '{datatype}' (supported: {', '.join(DATATYPES)})"
        ) from None


def from_ort(ort_type: str) -> str:
    try:
        return _ORT_TO_V2[ort_type]
    except KeyError:
        raise ValueError(f"ONNX type {ort_type} is not supported by the v2 protocol") from None


def to_triton(datatype: str) -> str:
    """``FP32`` → ``TYPE_FP32``; BYTES is ``TYPE_STRING`` in Triton's model config."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def from_triton(config_type: str) -> str:
    name = config_type.removeprefix("TYPE_")
    name = "BYTES" if name == "STRING" else name
    if name not in NUMPY_DTYPES:
        raise ValueError(f"Triton data type {config_type} is not supported for ONNX models")
    return name
