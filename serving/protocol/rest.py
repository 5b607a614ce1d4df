"""The v2 REST body: JSON tensors and the binary-tensor extension, both directions."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pydantic

from serving.errors import InvalidInputError
from serving.protocol import raw
from serving.protocol.datatypes import element_count, numpy_dtype
from serving.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"


class _InputJSON(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    name: str
    shape: list[pydantic.NonNegativeInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class _OutputJSON(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    name: str
    parameters: dict[str, Any] | None = None


class _RequestJSON(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_InputJSON]
    outputs: list[_OutputJSON] | None = None


def _describe(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def decode_request(
    body: bytes, header_length: int | None, *, model_name: str, model_version: str | None
) -> InferenceRequest:
    """Parse a v2 infer request body; ``header_length`` is the binary extension's JSON size."""
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
    try:
        parsed = _RequestJSON.model_validate_json(header)
    except pydantic.ValidationError as error:
        if any(e["type"] == "json_invalid" for e in error.errors()):
            raise InvalidInputError(f"request body is not valid JSON: {_describe(error)}") from None
        raise InvalidInputError(f"invalid inference request: {_describe(error)}") from None

    offset = 0
    inputs: list[Tensor] = []
    for item in parsed.inputs:
        shape = tuple(item.shape)
        size = (item.parameters or {}).get("binary_data_size")
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
            data = raw.decode(item.name, item.datatype, shape, binary[offset : offset + size])
            offset += size
        else:
            if item.data is None:
                raise InvalidInputError(
                    f"input '{item.name}' has neither data nor binary_data_size"
                )
            data = _from_json(item.name, item.datatype, shape, item.data)
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


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(item, str) for item in flat):
            raise InvalidInputError(f"input '{name}': BYTES data in JSON must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [item.encode("utf-8") for item in flat]
    else:
        try:
            array = np.asarray(data, dtype=dtype).reshape(-1)
        except (ValueError, TypeError, OverflowError) as error:
            raise InvalidInputError(
                f"input '{name}': data is not valid {datatype}: {error}"
            ) from None
    if array.size != count:
        raise InvalidInputError(
            f"input '{name}': {array.size} data elements for shape {list(shape)}, expected {count}"
        )
    return array.reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


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
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in flat
        ]
    return np.ascontiguousarray(flat)
