"""Closed-loop latency and throughput of ``digits`` per protocol, beside in-process ONNX Runtime.

    python -m benchmarks.latency [--seconds 8] [--concurrency 1 8 16]
                                 [--protocols http_json http_binary grpc]

Starts the server on an embedded Ray with the demo repository and drives it with tritonclient's
asyncio clients, one row per request, N requests in flight. The same rows also run through an
in-process ONNX Runtime session with the server's session options: the floor for every figure.
Writes JSON (with commit, hardware, versions) and a Markdown table under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.context import collect

RESULTS = Path(__file__).parent / "results"
PROTOCOLS = ("http_json", "http_binary", "grpc")
WARMUP_S = 1.0


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _sender(
    protocol: str, urls: dict[str, str]
) -> tuple[Callable[[np.ndarray], Awaitable[Any]], Any]:
    if protocol.startswith("http"):
        import tritonclient.http.aio as module

        client: Any = module.InferenceServerClient(urls["http"], conn_limit=256)
        binary = protocol == "http_binary"

        async def send(row: np.ndarray) -> Any:
            tensor = module.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(row, binary_data=binary)
            wanted = [
                module.InferRequestedOutput(n, binary_data=binary)
                for n in ("probabilities", "label")
            ]
            return await client.infer("digits", [tensor], outputs=wanted)

        return send, client
    import tritonclient.grpc.aio as grpc_module

    client = grpc_module.InferenceServerClient(urls["grpc"])

    async def send_grpc(row: np.ndarray) -> Any:
        tensor = grpc_module.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(row)
        return await client.infer("digits", [tensor])

    return send_grpc, client


async def drive(protocol: str, urls: dict[str, str], rows: np.ndarray, concurrency: int,
                seconds: float) -> dict[str, Any]:  # fmt: skip
    send, client = _sender(protocol, urls)
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def worker(offset: int) -> None:
        nonlocal errors
        index = offset
        while time.perf_counter() < stop_at:
            row = rows[index % len(rows)][None, :]
            began = time.perf_counter()
            try:
                await send(row)
                latencies.append(time.perf_counter() - began)
            except Exception:
                errors += 1
            index += concurrency

    stop_at = time.perf_counter() + WARMUP_S
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies.clear()
    errors = 0
    began = time.perf_counter()
    cpu_began = time.process_time()
    stop_at = began + seconds
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    client_cpu = (time.process_time() - cpu_began) / elapsed
    await client.close()
    return {
        "throughput_rps": len(latencies) / elapsed,
        "errors": errors,
        "client_cpu_cores": round(client_cpu, 2),
        **percentiles(latencies),
    }


def in_process(model: Path, rows: np.ndarray, concurrency: int, seconds: float) -> dict[str, Any]:
    from serving.runtimes.onnx import ONNXRuntime, SessionOptions

    runtime = ONNXRuntime(model, providers=("cpu",), options=SessionOptions(intra_op_threads=1))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        index = slot
        while time.perf_counter() < stop_at:
            row = rows[index % len(rows)][None, :]
            began = time.perf_counter()
            runtime.infer({"input": row}, ["probabilities", "label"])
            latencies[slot].append(time.perf_counter() - began)
            index += concurrency

    for _ in range(200):
        runtime.infer({"input": rows[:1]}, ["probabilities", "label"])
    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for slot in latencies for x in slot]
    return {"throughput_rps": len(flat) / elapsed, "errors": 0, **percentiles(flat)}


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| path | concurrency | p50 ms | p99 ms | req/s | errors | client CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['throughput_rps']:.0f} | {r['errors']} | {r.get('client_cpu_cores', '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--name", default="latency", help="file name of the report")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import socket

    from serving import demo, deployment
    from serving.config import ServerConfig

    repository = demo.ensure()
    rows = np.load(repository / "digits" / "evaluation.npz")["inputs"].astype(np.float32)
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    config = ServerConfig(
        repository=repository, host="127.0.0.1", http_port=ports[0], grpc_port=ports[1],
        replicas=args.replicas,
    )  # fmt: skip
    urls = {"http": f"127.0.0.1:{ports[0]}", "grpc": f"127.0.0.1:{ports[1]}"}
    deployment.connect()
    deployment.deploy(config, name="bench")
    results: list[dict[str, Any]] = []
    try:
        for concurrency in args.concurrency:
            for protocol in args.protocols:
                figures = asyncio.run(drive(protocol, urls, rows, concurrency, args.seconds))
                results.append({"path": protocol, "concurrency": concurrency, **figures})
            local = in_process(repository / "digits/2/model.onnx", rows, concurrency, args.seconds)
            results.append({"path": "in-process ORT", "concurrency": concurrency, **local})
    finally:
        deployment.shutdown()
    rendered = table(results)
    print(rendered)
    args.out.mkdir(parents=True, exist_ok=True)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"context": collect(parameters), "results": results}
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(rendered + "\n")


if __name__ == "__main__":
    main()
