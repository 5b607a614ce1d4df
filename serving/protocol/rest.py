"""The v2 REST body: JSON tensors and the binary-tensor extension, both directions."""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any

import numpy as np
import orjson
import pydantic
import pydantic_core

from serving.errors import InvalidInputError
from serving.protocol import raw
from serving.protocol.datatypes import NUMPY_DTYPES, numpy_dtype
from serving.protocol.limits import DEFAULT_LIMITS, InputLimits, out_of_range
from serving.protocol.limits import shown as _shown
from serving.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"


def _scalar_values(parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    # The v2 protocol's parameters are strings, numbers and booleans (as Triton checks).
    for key, value in (parameters or {}).items():
        if not isinstance(value, str | int | float):
            raise ValueError(
                f"parameter '{key}' must be a string, number or boolean, not {_kind(value)}"
            )
    return parameters


Parameters = Annotated[dict[str, Any] | None, pydantic.AfterValidator(_scalar_values)]


class _InputJSON(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    name: str
    shape: list[pydantic.NonNegativeInt]
    datatype: str
    parameters: Parameters = None
    data: Any = None


class _OutputJSON(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    name: str
    parameters: Parameters = None


class _RequestJSON(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    id: str | None = None
    parameters: Parameters = None
    inputs: list[_InputJSON]
    outputs: list[_OutputJSON] | None = None


def _describe(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _count_values(header: bytes | bytearray, limits: InputLimits) -> None:
    """Refuse, before it is parsed, a JSON document with more values than the limit: every value
    but the first in a container follows a comma, and every container opens with a bracket, so
    commas and brackets bound the values (counted at memory speed, those inside strings too:
    a body with millions of commas in its strings belongs in the binary extension)."""
    bound = header.count(b",") + header.count(b"[") + header.count(b"{") + 1
    limits.objects(bound, "JSON values and separators")


def decode_request(
    body: bytes | bytearray,
    header_length: int | None,
    *,
    model_name: str,
    model_version: str | None,
    limits: InputLimits = DEFAULT_LIMITS,
) -> InferenceRequest:
    """Parse a v2 infer request body; ``header_length`` is the binary extension's JSON size.

    Every limit is checked before what it bounds is allocated: the JSON's value count before it
    is parsed, each declared shape and the request's totals before any tensor is decoded.
    """
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"of {len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = bytes(view[:header_length]), view[header_length:]
    _count_values(header, limits)
    try:
        parsed = _RequestJSON.model_validate_json(header)
    except pydantic.ValidationError as error:
        if any(e["type"] == "json_invalid" for e in error.errors()):
            raise InvalidInputError(f"request body is not valid JSON: {_describe(error)}") from None
        raise InvalidInputError(f"invalid inference request: {_describe(error)}") from None

    declared = []
    elements = objects = 0
    for item in parsed.inputs:
        shape, count = limits.shape(item.name, item.shape)
        size = (item.parameters or {}).get("binary_data_size")
        elements += count
        if size is None or item.datatype == "BYTES":
            objects += count
        declared.append((item, shape, count, size))
    limits.request(elements, objects)

    offset = 0
    inputs: list[Tensor] = []
    for item, shape, count, size in declared:
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInputError(
                    f"input '{item.name}': binary_data_size must be a non-negative integer"
                )
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"input '{item.name}': binary_data_size {size} exceeds the "
                    f"{len(binary) - offset} bytes of binary data left in the request"
                )
            chunk = binary[offset : offset + size]
            data = raw.decode(item.name, item.datatype, shape, chunk, count=count, limits=limits)
            offset += size
        else:
            if item.data is None:
                raise InvalidInputError(
                    f"input '{item.name}' has neither data nor binary_data_size"
                )
            data = _from_json(item.name, item.datatype, shape, count, item.data, limits)
        inputs.append(Tensor(item.name, item.datatype, data, item.parameters or {}))
    if offset != len(binary):
        raise InvalidInputError(
            f"request carries {len(binary) - offset} bytes of binary data that no input claims"
        )

    outputs = None
    if parsed.outputs is not None:
        outputs = [RequestedOutput(o.name, o.parameters or {}) for o in parsed.outputs]
    return InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        outputs=outputs,
        id=parsed.id,
        parameters=parsed.parameters or {},
    )


_INTEGER = frozenset({int})
_NUMBER = frozenset({int, float})
_JSON_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "BOOL": (frozenset({bool}), "a JSON boolean (true or false)"),
    "FP16": (_NUMBER, "a JSON number"),
    "FP32": (_NUMBER, "a JSON number"),
    "FP64": (_NUMBER, "a JSON number"),
    "BYTES": (frozenset({str}), "a JSON string"),
}
"""What JSON each datatype takes (the integer types: integers only); nothing is coerced."""


def _from_json(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any, limits: InputLimits
) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    leaves = _leaves(name, data, len(shape))
    if len(leaves) != count:
        raise InvalidInputError(
            f"input '{name}': {len(leaves)} data elements for shape {list(shape)}, expected {count}"
        )
    allowed, expected = _JSON_TYPES.get(datatype, (_INTEGER, "a JSON integer"))
    if not set(map(type, leaves)) <= allowed:
        index, value = next((i, v) for i, v in enumerate(leaves) if type(v) not in allowed)
        raise InvalidInputError(
            f"input '{name}': element {index} is {_kind(value)} ({_shown(value)}), "
            f"{datatype} takes {expected}"
        )
    if datatype == "BYTES":
        try:
            encoded = [item.encode("utf-8") for item in leaves]
        except UnicodeEncodeError as error:
            raise InvalidInputError(
                f"input '{name}': a string is not valid Unicode: {error}"
            ) from None
        longest = max(map(len, encoded), default=0)
        limits.bytes_element(name, longest)
        array = np.empty(count, dtype=object)
        array[:] = encoded
        return array.reshape(shape)
    if dtype.kind == "f":
        try:
            with np.errstate(over="ignore"):
                array = np.array(leaves, dtype=dtype)
        except OverflowError:  # an integer beyond float64
            _in_range(name, datatype, leaves)
            raise
        if np.isinf(array).any():
            _in_range(name, datatype, leaves)
        return array.reshape(shape)
    try:
        array = np.array(leaves, dtype=dtype)
    except OverflowError:
        raise out_of_range(name, datatype, leaves) from None
    return array.reshape(shape)


def _in_range(name: str, datatype: str, leaves: list[Any]) -> None:
    """Refuse the first finite number that overflows to infinity in ``datatype`` (70000 as
    FP16); infinities sent as such (``Infinity``) stay."""
    scalar = NUMPY_DTYPES[datatype].type
    for index, value in enumerate(leaves):
        if type(value) is float and math.isinf(value):
            continue
        try:
            with np.errstate(over="ignore"):
                overflows = math.isinf(scalar(value))
        except OverflowError:
            overflows = True
        if overflows:
            largest = float(np.finfo(scalar).max)
            raise InvalidInputError(
                f"input '{name}': element {index} ({_shown(value)}) is out of range for "
                f"{datatype} (largest finite value {largest:g})"
            )


def _leaves(name: str, data: Any, ndim: int) -> list[Any]:
    """The scalars of ``data``, a value or lists nested no deeper than the shape (as v2
    allows: flat, or nested like the shape), in row-major order."""
    if not isinstance(data, list):
        return [data]
    depth = 0
    probe: Any = data
    while isinstance(probe, list) and probe:
        probe = probe[0]
        depth += 1
    if depth > max(ndim, 1):
        raise InvalidInputError(
            f"input '{name}': data nests {depth} lists deep, deeper than its {ndim}-dim shape"
        )
    level: list[Any] = data
    for _ in range(depth - 1):
        if set(map(type, level)) != {list}:
            raise InvalidInputError(
                f"input '{name}': data is nested irregularly (lists and values side by side)"
            )
        level = list(itertools.chain.from_iterable(level))
    return level


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def encode_response(
    response: InferenceResponse, request: InferenceRequest
) -> tuple[bytes, int | None]:
    """Body of an infer response and, when it carries binary tensors, the JSON header length."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    wanted = {o.name: o.parameters for o in request.outputs or []}
    outputs_json: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        binary = wanted.get(tensor.name, {}).get("binary_data", default_binary)
        if binary:
            payload = raw.encode(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(payload)}
            buffers.append(payload)
        else:
            entry["data"] = _to_json(tensor)
        outputs_json.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs_json,
    }
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, None
    return header + b"".join(buffers), len(header)


def _to_json(tensor: Tensor) -> Any:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [_text(tensor.name, index, item) for index, item in enumerate(flat)]
    flat = np.ascontiguousarray(flat)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        # As Triton writes them (RapidJSON's kWriteNanAndInfFlag): NaN, Infinity, -Infinity.
        return orjson.Fragment(pydantic_core.to_json(flat.tolist(), inf_nan_mode="constants"))
    return flat


def _text(name: str, index: int, item: Any) -> str:
    if not isinstance(item, bytes):
        return str(item)
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(
            f"output '{name}': element {index} is not UTF-8 text, which JSON cannot carry; "
            "ask for it in binary (output parameter binary_data: true)"
        ) from None
