"""One test-facing client over tritonclient's HTTP, gRPC and gRPC asyncio clients.

Each method calls the real client and normalizes what comes back (gRPC's JSON renders int64 as
strings, HTTP's model config too), so one test body checks every protocol.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from google.protobuf import json_format

from serving.errors import ErrorCode
from serving.status import STATUS

PROTOCOLS = ("http", "grpc", "grpc_aio")

_INT_KEYS = {
    "shape", "dims", "count", "ns", "inference_count", "execution_count", "last_inference",
    "batch_size", "max_batch_size", "num_versions",
}  # fmt: skip


def _ints(document: Any, key: str = "") -> Any:
    if isinstance(document, dict):
        return {k: _ints(v, k) for k, v in document.items()}
    if isinstance(document, list):
        return [_ints(v, key) for v in document]
    if key in _INT_KEYS and isinstance(document, str):
        return int(document)
    return document


def outside_address() -> str | None:
    """One of this machine's own addresses that is not loopback (the route out, found without
    sending anything), or None where there is none."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.254.254.254", 1))
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def error_code(error: Exception) -> ErrorCode:
    """The ErrorCode behind a tritonclient exception, from HTTP status or gRPC code."""
    status = str(error.status())  # type: ignore[attr-defined]
    for code, pair in STATUS.items():
        if status in (str(pair.http), str(pair.grpc)):
            return code
    raise AssertionError(f"unmapped status {status}")


@dataclass
class In:
    name: str
    data: np.ndarray
    datatype: str
    binary: bool = True


@dataclass
class Out:
    name: str
    binary: bool = True


@dataclass
class Result:
    outputs: dict[str, np.ndarray]
    model_version: str
    id: str
    output_meta: dict[str, dict[str, Any]]


class V2Client:
    def __init__(self, protocol: str, http_url: str, grpc_url: str) -> None:
        self.protocol = protocol
        self.http_url = http_url
        self.grpc_url = grpc_url
        if protocol == "http":
            self._module: Any = httpclient
            self._client: Any = httpclient.InferenceServerClient(http_url)
        else:
            self._module = grpcclient
            self._client = grpcclient.InferenceServerClient(grpc_url)

    # Calls go to the sync client, or to a fresh asyncio client for "grpc_aio".
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.protocol != "grpc_aio":
            return getattr(self._client, method)(*args, **kwargs)

        async def run() -> Any:
            client = grpcaio.InferenceServerClient(self.grpc_url)
            try:
                return await getattr(client, method)(*args, **kwargs)
            finally:
                await client.close()

        return asyncio.run(run())

    def _doc(self, method: str, *args: Any) -> Any:
        if self.protocol == "http":
            return _ints(self._call(method, *args))
        message = self._call(method, *args)
        return _ints(json_format.MessageToDict(message, preserving_proto_field_name=True))

    def is_server_live(self) -> bool:
        return bool(self._call("is_server_live"))

    def is_server_ready(self) -> bool:
        return bool(self._call("is_server_ready"))

    def is_model_ready(self, model: str, version: str = "") -> bool:
        return bool(self._call("is_model_ready", model, version))

    def server_metadata(self) -> dict[str, Any]:
        return self._doc("get_server_metadata")  # type: ignore[no-any-return]

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        return self._doc("get_model_metadata", model, version)  # type: ignore[no-any-return]

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        document = self._doc("get_model_config", model, version)
        return document if self.protocol == "http" else document["config"]  # type: ignore[no-any-return]

    def statistics(self, model: str = "", version: str = "") -> list[dict[str, Any]]:
        document = self._doc("get_inference_statistics", model, version)
        return document.get("model_stats", [])  # type: ignore[no-any-return]

    def repository_index(self) -> list[dict[str, Any]]:
        document = self._doc("get_model_repository_index")
        rows = document if self.protocol == "http" else document.get("models", [])
        # gRPC leaves empty fields out of its JSON, HTTP leaves out what is empty or unset.
        return [{k: v for k, v in row.items() if v != ""} for row in rows]

    def load_model(self, model: str, config: str | None = None) -> None:
        self._call("load_model", model, config=config)

    def unload_model(self, model: str) -> None:
        self._call("unload_model", model)

    def infer(
        self,
        model: str,
        inputs: list[In],
        *,
        outputs: list[Out] | None = None,
        version: str = "",
        request_id: str = "",
        compression: str | None = None,
        timeout_us: int | None = None,
    ) -> Result:
        module = self._module
        tensors = []
        for item in inputs:
            tensor = module.InferInput(item.name, list(item.data.shape), item.datatype)
            if self.protocol == "http":
                tensor.set_data_from_numpy(item.data, binary_data=item.binary)
            else:
                tensor.set_data_from_numpy(item.data)
            tensors.append(tensor)
        requested = None
        if outputs is not None:
            if self.protocol == "http":
                requested = [
                    module.InferRequestedOutput(o.name, binary_data=o.binary) for o in outputs
                ]
            else:
                requested = [module.InferRequestedOutput(o.name) for o in outputs]
        kwargs: dict[str, Any] = {
            "model_version": version, "outputs": requested, "request_id": request_id,
        }  # fmt: skip
        if timeout_us is not None:
            kwargs["timeout"] = timeout_us  # the server-side timeout, in µs, on both clients
        if compression is not None:
            key = (
                "request_compression_algorithm"
                if self.protocol == "http"
                else "compression_algorithm"
            )
            kwargs[key] = compression
        result = self._call("infer", model, tensors, **kwargs)
        response = result.get_response()
        if self.protocol != "http":
            response = _ints(json_format.MessageToDict(response, preserving_proto_field_name=True))
        meta = {o["name"]: o for o in response.get("outputs", [])}
        return Result(
            outputs={name: result.as_numpy(name) for name in meta},
            model_version=response.get("model_version", ""),
            id=response.get("id", ""),
            output_meta=meta,
        )
