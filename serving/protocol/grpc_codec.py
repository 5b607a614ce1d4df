"""v2 gRPC messages ⇄ transport-neutral requests and responses.

Inputs come as ``raw_input_contents`` (decoded by ``raw``, as HTTP's binary extension is) or as
typed ``contents``; outputs always go back as ``raw_output_contents``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from serving.errors import InvalidInputError
from serving.protocol import raw
from serving.protocol.datatypes import numpy_dtype
from serving.protocol.limits import DEFAULT_LIMITS, InputLimits, out_of_range
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
        # BYTES elements, and typed contents, which protobuf has parsed into Python objects
        objects += count if item.datatype == "BYTES" or not raw_contents else 0
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


_INPUTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["inputs"].number
_CONTENTS = pb.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields_by_name["contents"].number
_FIELD = FieldDescriptor
_PACKED_WIDTH = {
    f.number: {_FIELD.TYPE_FLOAT: 4, _FIELD.TYPE_DOUBLE: 8}.get(f.type, 0)
    for f in pb.InferTensorContents.DESCRIPTOR.fields
    if f.type != _FIELD.TYPE_BYTES
}
"""Each typed-contents field that arrives packed: its fixed width, or 0 for varints."""
_LOW_BYTES = bytes(range(0x80))


def check_wire(data: bytes, limits: InputLimits) -> None:
    """Refuse a ModelInferRequest whose typed ``contents`` hold more elements than the limit,
    from its wire bytes, before protobuf parses them: parsed, an empty BYTES element takes 32
    bytes for its 2 on the wire, a varint 8 for 1. Raw contents are skipped over, not read."""
    count = 0
    stop = limits.max_object_elements
    try:
        for number, _, start, end in _fields(data, 0, len(data)):
            if number != _INPUTS:
                continue
            for inner, _, begin, finish in _fields(data, start, end):
                if inner != _CONTENTS:
                    continue
                for field, kind, first, last in _fields(data, begin, finish):
                    width = _PACKED_WIDTH.get(field)
                    if width is None or kind != 2:
                        count += 1  # one BYTES element, or one value sent unpacked
                    elif width:
                        count += (last - first) // width
                    else:  # packed varints: one ends at each byte below 0x80
                        payload = data[first:last]
                        count += len(payload) - len(payload.translate(None, _LOW_BYTES))
                    if count > stop:
                        limits.objects(count, "typed contents elements (or more)")
    except (IndexError, ValueError):
        return  # not valid protobuf: the parser says so


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each field between ``pos`` and
    ``end``; for a length-delimited field the value is its payload."""
    while pos < end:
        key, pos = _varint(data, pos)
        kind = key & 7
        if kind == 0:
            start = pos
            _, pos = _varint(data, pos)
        elif kind == 2:
            length, start = _varint(data, pos)
            pos = start + length
        elif kind in (1, 5):
            start = pos
            pos += 8 if kind == 1 else 4
        else:
            raise ValueError(f"wire type {kind}")
        if pos > end:
            raise ValueError("field runs past its message")
        yield key >> 3, kind, start, pos


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
        raise out_of_range(name, datatype, values) from None


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
