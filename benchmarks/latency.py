"""Closed-loop latency and throughput of ``digits`` per protocol, beside in-process ONNX Runtime.

    python -m benchmarks latency [--seconds 8] [--concurrency 1 8 16]
                                 [--protocols http_json http_binary grpc]

Starts the server on an embedded Ray with the demo repository, sized to the machine as
``serving serve`` sizes it (or ``--replicas``), and drives it one row per request, N requests in
flight. The same rows also run through an in-process ONNX Runtime session with the server's
session options: the floor for every figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import PROTOCOLS, Target, in_process, table
from benchmarks.measure import closed_loop
from benchmarks.report import save
from benchmarks.server import deployed, embedded_ray
from serving.models.repository import load_config

COLUMNS = [
    ("path", "path", ""),
    ("concurrency", "concurrency", "d"),
    ("p50_ms", "p50 ms", ".3f"),
    ("p99_ms", "p99 ms", ".3f"),
    ("throughput_rps", "req/s", ".0f"),
    ("error_count", "errors", "d"),
    ("client_cpu_cores", "client CPU (cores)", ""),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--replicas", type=int, default=None)


def run(args: argparse.Namespace) -> list[Path]:
    from serving import demo

    repository = demo.ensure()
    rows = np.load(repository / "digits" / "evaluation.npz")["inputs"].astype(np.float32)
    target = Target("digits", "input", "FP32", rows[:, None, :], ("probabilities", "label"))
    results: list[dict[str, Any]] = []
    with embedded_ray(), deployed(repository, "bench", replicas=args.replicas) as served:
        config = served.deployed
        model = config.repository / "digits" / "config.yaml"
        threads = config.threads_per_instance(load_config(model.parent))
        for concurrency in args.concurrency:
            for protocol in args.protocols:
                figures = closed_loop(protocol, served.urls, target, concurrency, args.seconds)
                results.append({"path": protocol, "concurrency": concurrency, **figures})
            local = in_process(
                repository / "digits/2/model.onnx", target, threads=threads,
                concurrency=concurrency, seconds=args.seconds,
            )  # fmt: skip
            results.append({"path": "in-process ORT", "concurrency": concurrency, **local})
    rendered = table(results, COLUMNS)
    print(rendered)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return save(
        args.out, args.name or "latency", parameters=parameters,
        document={"results": results}, markdown=rendered,
    )  # fmt: skip
