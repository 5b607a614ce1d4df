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
from serving.protocol.datatypes import element_count, numpy_dtype
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


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise InvalidInputError(
            f"{len(raw_contents)} raw_input_contents for {len(message.inputs)} inputs; when raw "
            "contents are used every input must have one"
        )
    inputs = []
    for index, item in enumerate(message.inputs):
        shape = tuple(item.shape)
        if shape and min(shape) < 0:
            raise InvalidInputError(f"input '{item.name}': shape {list(shape)} has a negative dim")
        if raw_contents:
            data = raw.decode(item.name, item.datatype, shape, raw_contents[index])
        else:
            data = _from_contents(item.name, item.datatype, shape, item.contents)
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


def _from_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"input '{name}': {datatype} data must be sent as raw_input_contents"
        )
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInputError(
            f"input '{name}': {len(values)} data elements for shape {list(shape)}, expected {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.asarray(list(values), dtype=dtype).reshape(shape)
    except (ValueError, OverflowError) as error:
        raise InvalidInputError(f"input '{name}': data is not valid {datatype}: {error}") from None


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
