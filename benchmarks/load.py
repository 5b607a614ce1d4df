"""What load is sent and how (tritonclient's asyncio clients), and the in-process floor."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stats import summarize

PROTOCOLS = ("http_json", "http_binary", "http_binary_tritonclient", "grpc", "grpc_tritonclient")


@dataclass(frozen=True)
class Target:
    """What to send: a model, its input, and the samples to cycle through (one per request)."""

    model: str
    input_name: str
    datatype: str
    samples: np.ndarray
    """Shape [n, 1, ...]: each request carries one [1, ...] sample."""
    outputs: tuple[str, ...]


def sender(
    protocol: str, urls: dict[str, str], target: Target
) -> tuple[Callable[[int], Awaitable[Any]], Any]:
    """``send(index)`` sends sample ``index`` (modulo the sample count); and the client to close.

    ``grpc`` and ``http_binary`` work as perf_analyzer does: each sample's request is encoded
    once up front (a ``ModelInferRequest`` sent on a plain ``grpc.aio`` stub; a binary-tensor
    body written whole to a keep-alive connection), and every answer is parsed and checked, so
    the load generator costs the server as little CPU as it can on a shared machine. For the
    CNN's 600 KB requests tritonclient's asyncio HTTP client spends 0.65 ms of CPU per request
    and the encoded sender 0.30 ms. ``http_json``, ``http_binary_tritonclient`` and
    ``grpc_tritonclient`` build every request through tritonclient's asyncio clients, as an
    application would.
    """
    samples = target.samples
    shape = list(samples.shape[1:])
    if protocol == "grpc":
        return _grpc_encoded(urls["grpc"], target)
    if protocol == "http_binary":
        return _http_encoded(urls["http"], target)
    if protocol.startswith("http"):
        import tritonclient.http.aio as module

        client: Any = module.InferenceServerClient(urls["http"], conn_limit=256)
        binary = protocol == "http_binary_tritonclient"

        async def send(index: int) -> Any:
            tensor = module.InferInput(target.input_name, shape, target.datatype)
            tensor.set_data_from_numpy(samples[index % len(samples)], binary_data=binary)
            wanted = [module.InferRequestedOutput(n, binary_data=binary) for n in target.outputs]
            return await client.infer(target.model, [tensor], outputs=wanted)

        return send, client
    import tritonclient.grpc.aio as grpc_module

    client = grpc_module.InferenceServerClient(urls["grpc"])

    async def send_grpc(index: int) -> Any:
        tensor = grpc_module.InferInput(target.input_name, shape, target.datatype)
        tensor.set_data_from_numpy(samples[index % len(samples)])
        return await client.infer(target.model, [tensor])

    return send_grpc, client


def _grpc_encoded(url: str, target: Target) -> tuple[Callable[[int], Awaitable[Any]], Any]:
    import grpc
    from tritonclient.grpc import service_pb2

    encoded = []
    for sample in target.samples:
        message = service_pb2.ModelInferRequest(model_name=target.model)
        tensor = message.inputs.add(name=target.input_name, datatype=target.datatype)
        tensor.shape.extend(sample.shape)
        message.raw_input_contents.append(np.ascontiguousarray(sample).tobytes())
        encoded.append(message.SerializeToString())
    channel = grpc.aio.insecure_channel(
        url,
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=None,  # already bytes
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )
    wanted = set(target.outputs)

    async def send(index: int) -> Any:
        response = await call(encoded[index % len(encoded)])
        if {o.name for o in response.outputs} < wanted or not response.raw_output_contents:
            raise RuntimeError(f"incomplete answer from {target.model}: {response.outputs}")
        return response

    return send, channel  # grpc.aio's close() is a coroutine, as measure() expects


def _http_encoded(url: str, target: Target) -> tuple[Callable[[int], Awaitable[Any]], Any]:
    """HTTP/1.1 keep-alive connections, each request's bytes (tritonclient's binary-tensor body
    behind a request line and headers) built once; answers parsed by tritonclient and checked."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    host, port = url.rsplit(":", 1)
    encoded = []
    for sample in target.samples:
        tensor = httpclient.InferInput(target.input_name, list(sample.shape), target.datatype)
        tensor.set_data_from_numpy(sample, binary_data=True)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in target.outputs]
        body, json_size = httpclient.InferenceServerClient.generate_request_body(
            [tensor], outputs=wanted
        )
        head = f"POST /v2/models/{target.model}/infer HTTP/1.1\r\nHost: {url}\r\n"
        head += f"Content-Length: {len(body)}\r\n"
        if json_size is not None:
            head += f"Inference-Header-Content-Length: {json_size}\r\n"
        encoded.append((head + "\r\n").encode() + body)
    opened: list[asyncio.StreamWriter] = []
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(index: int) -> Any:
        if idle:
            reader, writer = idle.pop()
        else:
            reader, writer = await asyncio.open_connection(host, int(port))
            opened.append(writer)
        writer.write(encoded[index % len(encoded)])
        status_line, _, lines = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in lines.split(b"\r\n") if line)
        }
        answer = await reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"connection", b"").lower() != b"close":
            idle.append((reader, writer))  # a request cut short leaves its connection out
        status = status_line.split(b" ", 2)[1].decode()
        if status != "200":
            raise InferenceServerException(answer.decode(errors="replace"), status)
        header_length = headers.get(b"inference-header-content-length")
        result = httpclient.InferenceServerClient.parse_response_body(
            answer, header_length=None if header_length is None else int(header_length)
        )
        if any(result.as_numpy(name) is None for name in target.outputs):
            raise RuntimeError(f"incomplete answer from {target.model}: {result.get_response()}")
        return result

    return send, _Connections(opened)


class _Connections:
    """What ``measure`` closes at the end: every connection the encoded HTTP sender opened."""

    def __init__(self, writers: list[asyncio.StreamWriter]) -> None:
        self._writers = writers

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()


def in_process(
    model: Path,
    target: Target,
    *,
    threads: int,
    batch: int = 1,
    concurrency: int = 1,
    seconds: float = 3.0,
) -> dict[str, Any]:
    """ONNX Runtime in this process with the server's session options; rows/s and latency."""
    from serving.models.runtimes.onnx import ONNXRuntime, SessionOptions

    runtime = ONNXRuntime(
        model, providers=("cpu",), options=SessionOptions(intra_op_threads=threads)
    )
    outputs = [t.name for t in runtime.outputs]
    samples = target.samples
    batches = [
        np.concatenate([samples[(i + j) % len(samples)] for j in range(batch)], axis=0)
        for i in range(0, max(len(samples), batch), batch)
    ]
    for chunk in batches[:3]:
        runtime.infer({target.input_name: chunk}, outputs)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        index = slot
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            runtime.infer({target.input_name: batches[index % len(batches)]}, outputs)
            latencies[slot].append(time.perf_counter() - began)
            index += concurrency

    began = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for slot in latencies for x in slot]
    return {"throughput_rps": len(flat) * batch / elapsed, "batch": batch, "error_count": 0,
            **summarize(flat)}  # fmt: skip


def cell(value: Any, fmt: str) -> str:
    """A table cell: '-' for missing or NaN, numbers formatted with ``fmt``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt and isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def table(
    results: list[dict[str, Any]], columns: list[tuple[str, str, str]], *, text_columns: int = 1
) -> str:
    """Markdown: ``columns`` are (key, header, format); the first ``text_columns`` align left."""
    aligns = ["---" if i < text_columns else "---:" for i in range(len(columns))]
    lines = [
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join(aligns) + "|",
    ]
    for row in results:
        lines.append("| " + " | ".join(cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)
