"""Dynamic batching on and off, for ``digits`` and a ResNet-18-shaped CNN, beside in-process ORT.

    python -m benchmarks.batching [--seconds 6] [--concurrency 1 4 16 64] [--protocol http_binary]
                                  [--pairs 5] [--pair-models resnet18]

One server replica with every core (ONNX Runtime threads = cores), closed loop, one sample per
request. The in-process figure is ONNX Runtime in this process at its best batch size (swept,
in two thread layouts), with the same thread count: the ceiling for server throughput. It is
read before Ray starts and again after Ray has shut down (each layout at its best batch, the
higher kept): these shared machines drift by a few per cent within minutes, so every row has
its ratio to both readings.

``--pairs N`` then measures the saturation ratio (batching on, the highest concurrency) N times
more, each pair bracketed by in-process readings taken the same way on a quiet machine: the
reading, a fresh Ray with the server deployed and saturated, Ray shut down, the next reading.
A pair's ratio is the server's rate over the mean of the readings around it, so the machine's
drift falls on both sides alike; the median and range of the pairs are reported. Writes JSON
and Markdown under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.context import collect
from benchmarks.load import PROTOCOLS, free_ports, table
from benchmarks.measure import Plan
from benchmarks.suite import SCENARIOS, best_again, build_repository, limits, measured
from serving.config import ServerConfig

RESULTS = Path(__file__).parent / "results"
MODELS = ("digits", "resnet18")
COLUMNS = [
    ("model", "model", ""),
    ("batching", "batching", ""),
    ("concurrency", "concurrency", "d"),
    ("p50_ms", "p50 ms", ".2f"),
    ("p99_ms", "p99 ms", ".2f"),
    ("throughput_rps", "req/s", ".1f"),
    ("vs_in_process", "÷ in-process best, before", ".3f"),
    ("vs_in_process_after", "÷ in-process best, after", ".3f"),
    ("rows_per_execution", "rows/execution", ".1f"),
    ("error_count", "errors", "d"),
    ("client_cpu_cores", "client CPU (cores)", ""),
]


PAIR_COLUMNS = [
    ("model", "model", ""),
    ("pairs", "pairs", "d"),
    ("median", "median ratio to in-process", ".3f"),
    ("low", "lowest", ".3f"),
    ("high", "highest", ".3f"),
]


@contextlib.contextmanager
def fresh_server(config: ServerConfig) -> Iterator[None]:
    """A fresh embedded Ray with the server deployed; shut down again on the way out."""
    from serving import deployment

    deployment.connect()
    try:
        deployment.deploy(config, name="bench")
        yield
    finally:
        deployment.shutdown()


def _spread(ratios: list[float]) -> dict[str, float]:
    return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http_binary")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="bracketed saturation measurements per model, after the table",
    )
    parser.add_argument(
        "--pair-models",
        nargs="+",
        choices=MODELS,
        default=["resnet18"],
        help="models measured in --pairs (digits' ratio to in-process ORT says nothing)",
    )
    parser.add_argument("--name", default="batching")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

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
        ceilings[model] = limits(repository, SCENARIOS[model], config.intra_op_threads, 3.0)

    def plan(concurrency: int) -> Plan:
        return Plan(args.protocol, concurrency=concurrency, window_s=args.seconds / 3,
                    max_windows=3)  # fmt: skip

    pairs: dict[str, list[dict[str, float]]] = {model: [] for model in args.models}
    try:
        with fresh_server(config):
            for model in args.models:
                for batched in (False, True):
                    target = SCENARIOS[model].target(repository, batched=batched)
                    for concurrency in args.concurrency:
                        figures = measured(plan(concurrency), urls, target)
                        results.append(
                            {"model": model, "batching": "on" if batched else "off", **figures}
                        )
        for model in args.models:
            best = ceilings[model]
            best["best_rps_after"] = before = best_again(repository, SCENARIOS[model], best, 3.0)
            target = SCENARIOS[model].target(repository, batched=True)
            for _ in range(args.pairs if model in args.pair_models else 0):
                with fresh_server(config):
                    served = measured(plan(max(args.concurrency)), urls, target)["throughput_rps"]
                after = best_again(repository, SCENARIOS[model], best, 3.0)
                pairs[model].append({"in_process_before": before, "served": served,
                                     "in_process_after": after,
                                     "ratio": served / ((before + after) / 2)})  # fmt: skip
                before = after
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in results:
        best = ceilings[row["model"]]
        row["vs_in_process"] = row["throughput_rps"] / best["best_rps"]
        row["vs_in_process_after"] = row["throughput_rps"] / best["best_rps_after"]
    for model in reversed(args.models):
        best = ceilings[model]
        layout = f"batch {best['best_batch']}, {best['best_layout']}"
        for when, key in (("after the server", "best_rps_after"), ("before", "best_rps")):
            results.insert(0, {"model": model, "batching": f"in-process ORT, {layout}, {when}",
                               "concurrency": "-", "throughput_rps": best[key],
                               "error_count": 0})  # fmt: skip

    rendered = table(results, COLUMNS)
    summary = [
        {"model": model, "pairs": len(runs), **_spread([run["ratio"] for run in runs])}
        for model, runs in pairs.items()
        if runs
    ]
    if summary:
        rendered += "\n\nSaturation, batching on, bracketed by in-process readings:\n\n"
        rendered += table(summary, PAIR_COLUMNS)
    print(rendered)
    args.out.mkdir(parents=True, exist_ok=True)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"context": collect(parameters), "in_process": ceilings, "results": results,
              "pairs": pairs, "pair_summary": summary}  # fmt: skip
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(rendered + "\n")


if __name__ == "__main__":
    main()
