"""p50/p99 latency and throughput of ``digits`` over HTTP, beside in-process ONNX Runtime.

    python -m benchmarks.http_latency [--seconds 10] [--concurrency 1 8]

Starts the server on an embedded Ray with the demo repository, drives it with
``tritonclient.http.aio`` (binary tensors, one row per request) in closed loop, and runs the same
inputs through an in-process ONNX Runtime session with the server's session options. Writes JSON
and a Markdown table under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.context import collect

RESULTS = Path(__file__).parent / "results"


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


async def _drive_http(
    url: str, rows: np.ndarray, concurrency: int, seconds: float
) -> dict[str, Any]:
    import tritonclient.http.aio as aioclient

    client = aioclient.InferenceServerClient(url, conn_limit=concurrency)
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def worker(offset: int) -> None:
        nonlocal errors
        index = offset
        while time.perf_counter() < stop_at:
            row = rows[index % len(rows) : index % len(rows) + 1]
            tensor = aioclient.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(row)
            began = time.perf_counter()
            try:
                await client.infer("digits", [tensor])
                latencies.append(time.perf_counter() - began)
            except Exception:
                errors += 1
            index += concurrency

    stop_at = time.perf_counter() + 1.0  # warm-up
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies.clear()
    began = time.perf_counter()
    stop_at = began + seconds
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    await client.close()
    return {"throughput_rps": len(latencies) / elapsed, "errors": errors, **percentiles(latencies)}


def in_process(model: Path, rows: np.ndarray, concurrency: int, seconds: float) -> dict[str, Any]:
    from serving.runtimes.onnx import ONNXRuntime, SessionOptions

    runtime = ONNXRuntime(model, providers=("cpu",), options=SessionOptions(intra_op_threads=1))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        index = slot
        while time.perf_counter() < stop_at:
            row = rows[index % len(rows) : index % len(rows) + 1]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from serving import demo, deployment
    from serving.config import ServerConfig

    repository = demo.ensure()
    rows = np.load(repository / "digits" / "evaluation.npz")["inputs"].astype(np.float32)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ServerConfig(
        repository=repository, host="127.0.0.1", http_port=port, grpc_port=None,
        replicas=args.replicas,
    )  # fmt: skip
    deployment.connect()
    deployment.deploy(config, name="bench")
    results: list[dict[str, Any]] = []
    try:
        for concurrency in args.concurrency:
            server = asyncio.run(_drive_http(f"127.0.0.1:{port}", rows, concurrency, args.seconds))
            local = in_process(repository / "digits/2/model.onnx", rows, concurrency, args.seconds)
            for name, figures in (("HTTP binary (server)", server), ("in-process ORT", local)):
                results.append({"path": name, "concurrency": concurrency, **figures})
    finally:
        deployment.shutdown()

    lines = [
        "| path | concurrency | p50 ms | p99 ms | req/s | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['throughput_rps']:.0f} | {r['errors']} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"context": collect(vars(args) | {"out": str(args.out)}), "results": results}
    (args.out / "http_latency.json").write_text(json.dumps(report, indent=2))
    (args.out / "http_latency.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
