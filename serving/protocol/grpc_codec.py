"""v2 gRPC messages ⇄ transport-neutral requests and responses.

Inputs come as ``raw_input_contents`` (decoded by ``raw``, as HTTP's binary extension is) or as
typed ``contents``; outputs always go back as ``raw_output_contents``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from serving.errors import InvalidInputError
from serving.protocol import raw
from serving.protocol.datatypes import numpy_dtype
from serving.protocol.limits import DEFAULT_LIMITS, InputLimits
from serving.protocol.proto import grpc_service_pb2 as pb
from serving.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

# The typed ``InferTensorContents`` field that carries each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_to_dict(parameters: Any) -> dict[str, Any]:
    if not parameters:
        return {}
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def _set_parameter(target: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        target[key].int64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    else:
        target[key].string_param = str(value)


def decode_request(
    message: pb.ModelInferRequest, limits: InputLimits = DEFAULT_LIMITS
) -> InferenceRequest:
    """The request a ``ModelInferRequest`` carries; each declared shape and the request's
    totals are checked against ``limits`` before any tensor is decoded."""
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise InvalidInputError(
            f"{len(raw_contents)} raw_input_contents for {len(message.inputs)} inputs; when raw "
            "contents are used every input must have one"
        )
    declared = []
    elements = objects = 0
    for item in message.inputs:
        if raw_contents and item.HasField("contents"):
            raise InvalidInputError(
                f"input '{item.name}': contents and raw_input_contents in one request; "
                "send every input one way"
            )
        shape, count = limits.shape(item.name, item.shape)
        elements += count
        objects += count if item.datatype == "BYTES" else 0
        declared.append((item, shape, count))
    limits.request(elements, objects)
    inputs = []
    for index, (item, shape, count) in enumerate(declared):
        if raw_contents:
            data = raw.decode(
                item.name, item.datatype, shape, raw_contents[index], count=count, limits=limits
            )
        else:
            data = _from_contents(item.name, item.datatype, shape, count, item.contents, limits)
        inputs.append(Tensor(item.name, item.datatype, data, parameters_to_dict(item.parameters)))
    outputs = None
    if message.outputs:
        outputs = [
            RequestedOutput(o.name, parameters_to_dict(o.parameters)) for o in message.outputs
        ]
    return InferenceRequest(
        model_name=message.model_name,
        model_version=message.model_version or None,
        inputs=inputs,
        outputs=outputs,
        id=message.id or None,
        parameters=parameters_to_dict(message.parameters),
    )


def typed_elements(message: pb.ModelInferRequest) -> int:
    """Elements a request sends as typed ``contents`` (each costs a conversion to decode)."""
    if message.raw_input_contents:
        return 0
    return sum(len(getattr(i.contents, CONTENTS_FIELD.get(i.datatype, "bool_contents")))
               for i in message.inputs)  # fmt: skip


def _from_contents(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    count: int,
    contents: Any,
    limits: InputLimits,
) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"input '{name}': {datatype} data must be sent as raw_input_contents"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"input '{name}': {len(values)} data elements for shape {list(shape)}, expected {count}"
        )
    if datatype == "BYTES":
        limits.bytes_element(name, max(map(len, values), default=0))
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:  # element by element: no list of Python numbers on the way
        return np.fromiter(values, dtype=dtype, count=count).reshape(shape)
    except OverflowError:
        info = np.iinfo(dtype)
        index, value = next((i, v) for i, v in enumerate(values) if not info.min <= v <= info.max)
        raise InvalidInputError(
            f"input '{name}': element {index} ({value}) is out of range for {datatype} "
            f"[{info.min}, {info.max}]"
        ) from None


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    for key, value in response.parameters.items():
        _set_parameter(message.parameters, key, value)
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        message.raw_output_contents.append(raw.encode(tensor.data, tensor.datatype))
    return message


def from_document(document: dict[str, Any], message: Message) -> Message:
    """Fill ``message`` from the dataplane's JSON-shaped document (unknown keys skipped)."""
    return json_format.ParseDict(document, message, ignore_unknown_fields=True)
