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
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.context import collect
from benchmarks.load import PROTOCOLS, Target, free_ports, in_process, table
from benchmarks.measure import closed_loop

RESULTS = Path(__file__).parent / "results"
COLUMNS = [
    ("path", "path", ""),
    ("concurrency", "concurrency", "d"),
    ("p50_ms", "p50 ms", ".3f"),
    ("p99_ms", "p99 ms", ".3f"),
    ("throughput_rps", "req/s", ".0f"),
    ("error_count", "errors", "d"),
    ("client_cpu_cores", "client CPU (cores)", ""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--name", default="latency", help="file name of the report")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from serving import demo, deployment
    from serving.config import ServerConfig

    repository = demo.ensure()
    rows = np.load(repository / "digits" / "evaluation.npz")["inputs"].astype(np.float32)
    target = Target("digits", "input", "FP32", rows[:, None, :], ("probabilities", "label"))
    http_port, grpc_port = free_ports(2)
    config = ServerConfig(
        repository=repository, host="127.0.0.1", http_port=http_port, grpc_port=grpc_port,
        replicas=args.replicas,
    )  # fmt: skip
    urls = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    deployment.connect()
    deployment.deploy(config, name="bench")
    results: list[dict[str, Any]] = []
    try:
        for concurrency in args.concurrency:
            for protocol in args.protocols:
                figures = closed_loop(protocol, urls, target, concurrency, args.seconds)
                results.append({"path": protocol, "concurrency": concurrency, **figures})
            local = in_process(
                repository / "digits/2/model.onnx", target, threads=config.intra_op_threads,
                concurrency=concurrency, seconds=args.seconds,
            )  # fmt: skip
            results.append({"path": "in-process ORT", "concurrency": concurrency, **local})
    finally:
        deployment.shutdown()
    rendered = table(results, COLUMNS)
    print(rendered)
    args.out.mkdir(parents=True, exist_ok=True)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"context": collect(parameters), "results": results}
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(rendered + "\n")


if __name__ == "__main__":
    main()
