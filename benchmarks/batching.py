"""Dynamic batching on and off, for ``digits`` and a ResNet-18-shaped CNN, beside in-process ORT.

    python -m benchmarks batching [--seconds 6] [--concurrency 1 4 16 64] [--protocol http_binary]
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
drift falls on both sides alike; the median and range of the pairs are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.load import PROTOCOLS, Target, table
from benchmarks.measure import Plan, bracketed, spread
from benchmarks.report import save
from benchmarks.server import Endpoint, deployed, embedded_ray
from benchmarks.suite import SCENARIOS, Scenario, best_again, build_repository, limits, measured

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
def fresh_server(repository: Path, cores: int) -> Iterator[Endpoint]:
    """A fresh embedded Ray with one replica on every core; shut down again on the way out."""
    with embedded_ray(), deployed(repository, "bench", replicas=1, replica_cpus=cores) as served:
        yield served


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> list[Path]:
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    repository = build_repository(workdir / "repo", tuple(args.models))

    results: list[dict[str, Any]] = []
    ceilings: dict[str, dict[str, Any]] = {}
    for model in args.models:
        ceilings[model] = limits(repository, SCENARIOS[model], cores, 3.0)

    def plan(concurrency: int) -> Plan:
        return Plan(args.protocol, concurrency=concurrency, window_s=args.seconds / 3,
                    max_windows=3)  # fmt: skip

    pairs: dict[str, list[dict[str, float]]] = {model: [] for model in args.models}
    try:
        with fresh_server(repository, cores) as served:
            urls = served.urls
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
            scenario = SCENARIOS[model]
            best["best_rps_after"] = best_again(repository, scenario, best, 3.0)
            target = scenario.target(repository, batched=True)

            def saturate(target: Target = target) -> float:
                with fresh_server(repository, cores) as again:
                    figures = measured(plan(max(args.concurrency)), again.urls, target)
                return float(figures["throughput_rps"])

            def ceiling(scenario: Scenario = scenario, best: dict[str, Any] = best) -> float:
                return best_again(repository, scenario, best, 3.0)

            count = args.pairs if model in args.pair_models else 0
            pairs[model] = bracketed(saturate, ceiling, count)
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
        {"model": model, "pairs": len(runs), **spread([run["ratio"] for run in runs])}
        for model, runs in pairs.items()
        if runs
    ]
    if summary:
        rendered += "\n\nSaturation, batching on, bracketed by in-process readings:\n\n"
        rendered += table(summary, PAIR_COLUMNS)
    print(rendered)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    document = {"in_process": ceilings, "results": results, "pairs": pairs,
                "pair_summary": summary}  # fmt: skip
    return save(
        args.out, args.name or "batching", parameters=parameters, document=document,
        markdown=rendered,
    )  # fmt: skip
