"""Dynamic batching on and off, for ``digits`` and a ResNet-18-shaped CNN, beside in-process ORT.

    python -m benchmarks.batching [--seconds 6] [--concurrency 1 4 16 64] [--protocol http_binary]

One server replica with every core (ONNX Runtime threads = cores), closed loop, one sample per
request. The in-process figure is ONNX Runtime in this process at its best batch size (swept),
with the same thread count: the ceiling for server throughput. Writes JSON and Markdown under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.context import collect
from benchmarks.load import PROTOCOLS, free_ports, table
from benchmarks.measure import Plan
from benchmarks.suite import SCENARIOS, build_repository, limits, measured

RESULTS = Path(__file__).parent / "results"
MODELS = ("digits", "resnet18")
COLUMNS = [
    ("model", "model", ""),
    ("batching", "batching", ""),
    ("concurrency", "concurrency", "d"),
    ("p50_ms", "p50 ms", ".2f"),
    ("p99_ms", "p99 ms", ".2f"),
    ("throughput_rps", "req/s", ".1f"),
    ("vs_in_process", "ratio to in-process best", ".2f"),
    ("rows_per_execution", "rows/execution", ".1f"),
    ("error_count", "errors", "d"),
    ("client_cpu_cores", "client CPU (cores)", ""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http_binary")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--name", default="batching")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from serving import deployment
    from serving.config import ServerConfig

    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    repository = build_repository(workdir / "repo", tuple(args.models))
    http_port, grpc_port = free_ports(2)
    config = ServerConfig(
        repository=repository, host="127.0.0.1", http_port=http_port, grpc_port=grpc_port,
        replicas=1, replica_cpus=float(cores),
    )  # fmt: skip
    urls = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}

    results: list[dict[str, Any]] = []
    ceilings: dict[str, dict[str, Any]] = {}
    for model in args.models:
        ceilings[model] = best = limits(repository, SCENARIOS[model], config.intra_op_threads, 3.0)
        shown = f"in-process ORT, batch {best['best_batch']}, {best['best_layout']}"
        results.append({"model": model, "batching": shown,
                        "concurrency": "-", "throughput_rps": best["best_rps"],
                        "vs_in_process": 1.0, "error_count": 0})  # fmt: skip

    deployment.connect()
    deployment.deploy(config, name="bench")
    try:
        for model in args.models:
            for batched in (False, True):
                target = SCENARIOS[model].target(repository, batched=batched)
                for concurrency in args.concurrency:
                    plan = Plan(args.protocol, concurrency=concurrency,
                                window_s=args.seconds / 3, max_windows=3)  # fmt: skip
                    figures = measured(plan, urls, target)
                    results.append({
                        "model": model,
                        "batching": "on" if batched else "off",
                        **figures,
                        "vs_in_process": figures["throughput_rps"] / ceilings[model]["best_rps"],
                    })  # fmt: skip
    finally:
        deployment.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    rendered = table(results, COLUMNS)
    print(rendered)
    args.out.mkdir(parents=True, exist_ok=True)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"context": collect(parameters), "in_process": ceilings, "results": results}
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(rendered + "\n")


if __name__ == "__main__":
    main()
