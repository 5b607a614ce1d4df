"""`serving serve REPO` with no flags: a CNN from a Triton config.pbtxt beside in-process ORT.

    python -m benchmarks defaults [--pairs 3] [--concurrency 16 32] [--before REV]

The repository is what a Triton user brings: a ResNet-18-shaped CNN (seeded weights) whose
``config.pbtxt`` names no ``instance_group`` and asks for dynamic batching with a 2 ms delay, and
the demo's ``digits``. The server is the command a user runs, ``serving serve REPO``, with
nothing but its ports given: whatever it serves with comes from its defaults. It is measured
closed loop over gRPC (requests encoded once, as perf_analyzer sends them) at each concurrency,
and ``digits`` at 1 in flight over gRPC and HTTP binary.

Each server run is bracketed by readings of in-process ONNX Runtime at its best (batch sizes
swept in two thread layouts once, then each layout's best read again), on a quiet machine: a
run's ratio is its rate over the mean of the readings around it. ``--before REV`` also runs the
``serving`` package of commit REV the same way, alternating with today's; ``digits`` at 1 in
flight is then also read with both servers up at once, in alternating windows
(``--digits-rounds``), so that "no worse than before" is read side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.load import Target, table
from benchmarks.measure import Plan, measure_apart, spread
from benchmarks.report import save
from benchmarks.server import command_line
from benchmarks.suite import SCENARIOS, best_again, limits

CNN_PBTXT = """name: "resnet18"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""
"""As a Triton user writes it: no instance_group, no thread settings."""

COLUMNS = [
    ("run", "run", "d"),
    ("server", "server", ""),
    ("what", "measured", ""),
    ("concurrency", "in flight", "d"),
    ("throughput_rps", "req/s", ".1f"),
    ("ratio", "÷ in-process best (bracketing mean)", ".3f"),
    ("p50_ms", "p50 ms", ".3f"),
    ("p99_ms", "p99 ms", ".3f"),
    ("error_count", "errors", "d"),
    ("client_cpu_cores", "client CPU", ".3f"),
]
SUMMARY_COLUMNS = [
    ("server", "server", ""),
    ("what", "measured", ""),
    ("runs", "runs", "d"),
    ("median", "median", ".3f"),
    ("low", "lowest", ".3f"),
    ("high", "highest", ".3f"),
]


def build_repository(root: Path) -> Path:
    from benchmarks.models import resnet18, save
    from serving import demo

    save(resnet18(), root / "resnet18" / "1" / "model.onnx")
    (root / "resnet18" / "config.pbtxt").write_text(CNN_PBTXT)
    shutil.copytree(demo.ensure() / "digits", root / "digits")
    return root


@contextlib.contextmanager
def source_of(revision: str) -> Iterator[Path]:
    """The ``serving`` package as commit ``revision`` had it, in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="serving-") as folder:
        archive = subprocess.run(
            ["git", "archive", revision, "serving"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        yield Path(folder)


def digits_target(repository: Path) -> Target:
    return SCENARIOS["digits"].target(repository, batched=False)


def measure_digits(repository: Path, urls: dict[str, str], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for protocol in ("grpc", "http_binary"):
        plan = Plan(protocol, concurrency=1, window_s=seconds, max_windows=6, warmup_s=1.0)
        figures = measure_apart(plan, urls, digits_target(repository))
        rows.append({"what": f"digits {protocol}", **figures})
    return rows


def measure_server(
    repository: Path, args: argparse.Namespace, source: Path | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """One ``serving serve`` run: the CNN at each concurrency, then digits at 1 in flight."""
    cnn = SCENARIOS["resnet18"].target(repository, batched=False)
    rows = []
    window = {"window_s": args.seconds, "max_windows": 6, "warmup_s": 2.0}
    with (
        tempfile.TemporaryDirectory() as state,
        command_line(repository, source=source, state_dir=Path(state)) as served,
    ):
        for concurrency in args.concurrency:
            plan = Plan(args.protocol, concurrency=concurrency, **window)
            rows.append({"what": "cnn", **measure_apart(plan, served.urls, cnn)})
        rows += measure_digits(repository, served.urls, args.seconds)
        banner = [line.rstrip() for line in served.banner if "INFO" not in line]
    return rows, banner


def digits_side_by_side(
    repository: Path, sources: list[tuple[str, Path | None]], rounds: int, seconds: float
) -> list[dict[str, Any]]:
    """Every source's ``serving serve`` up at once; digits at 1 in flight read from each in
    turn, ``rounds`` times, the order alternating: both see the same machine."""
    rows = []
    with contextlib.ExitStack() as stack:
        servers = []
        for label, source in sources:
            state = stack.enter_context(tempfile.TemporaryDirectory())
            served = stack.enter_context(
                command_line(repository, source=source, state_dir=Path(state))
            )
            servers.append((label, served))
        for index in range(rounds):
            for label, served in servers[:: 1 if index % 2 == 0 else -1]:
                for row in measure_digits(repository, served.urls, seconds):
                    rows.append({"run": index + 1, "server": label, **row})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=3, help="server runs of each source")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--protocol", choices=["grpc", "http_binary"], default="grpc")
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement window")
    parser.add_argument("--before", help="also run the serving package of this commit")
    parser.add_argument(
        "--digits-rounds", type=int, default=8, help="side-by-side digits rounds (with --before)"
    )


def run(args: argparse.Namespace) -> list[Path]:
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-defaults-"))
    try:
        with contextlib.ExitStack() as stack:
            repository = build_repository(workdir / "repo")
            sources: list[tuple[str, Path | None]] = [("today", None)]
            if args.before:
                sources.append((f"before ({args.before})", stack.enter_context(
                    source_of(args.before)
                )))  # fmt: skip
            scenario = SCENARIOS["resnet18"]
            ceiling = limits(repository, scenario, cores, 3.0)
            readings = [ceiling["best_rps"]]
            rows: list[dict[str, Any]] = []
            banners: dict[str, list[str]] = {}
            order = [
                s for pair in range(args.pairs) for s in sources[:: 1 if pair % 2 == 0 else -1]
            ]
            for index, (label, source) in enumerate(order, start=1):
                measured, banner = measure_server(repository, args, source)
                banners.setdefault(label, banner)
                readings.append(best_again(repository, scenario, ceiling, 3.0))
                bracket = (readings[-2] + readings[-1]) / 2
                for row in measured:
                    row.update(run=index, server=label, in_process=bracket)
                    if row["what"] == "cnn":
                        row["ratio"] = row["throughput_rps"] / bracket
                rows += measured
            side_by_side = []
            if args.before:
                side_by_side = digits_side_by_side(
                    repository, sources, args.digits_rounds, args.seconds
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = []
    for label, _ in sources:
        for what in sorted({r["what"] for r in rows}):
            mine = [r for r in rows if r["server"] == label and r["what"] == what]
            for concurrency in sorted({r["concurrency"] for r in mine}):
                picked = [r for r in mine if r["concurrency"] == concurrency]
                values = [r["ratio"] if what == "cnn" else r["p50_ms"] for r in picked]
                measure = "÷ in-process" if what == "cnn" else "p50 ms"
                summary.append({"server": label, "what": f"{what} at {concurrency}: {measure}",
                                "runs": len(values), **spread(values)})  # fmt: skip
        for what in sorted({r["what"] for r in side_by_side}):
            values = [
                r["p50_ms"] for r in side_by_side if r["server"] == label and r["what"] == what
            ]
            summary.append({"server": label, "what": f"{what} at 1, side by side: p50 ms",
                            "runs": len(values), **spread(values)})  # fmt: skip
    text = "\n".join([
        "# `serving serve REPO` with no flags: CNN from a Triton config.pbtxt",
        "",
        f"In-process ONNX Runtime at its best: {ceiling['best_rps']:.1f} rows/s at first "
        f"(batch {ceiling['best_batch']}, {ceiling['best_layout']}); readings between the runs: "
        + ", ".join(f"{r:.1f}" for r in readings[1:]),
        "",
        table(summary, SUMMARY_COLUMNS, text_columns=2),
        "",
        table(rows, COLUMNS, text_columns=3),
        "",
        "Side by side (every server up at once, alternating windows):",
        "",
        table(side_by_side, COLUMNS, text_columns=3) if side_by_side else "(not run)",
        "",
        *(f"What `{label}` printed at start:\n\n```\n" + "\n".join(lines[-12:]) + "\n```\n"
          for label, lines in banners.items()),
    ])  # fmt: skip
    print(text)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    document = {"in_process": ceiling, "in_process_readings": readings, "runs": rows,
                "side_by_side": side_by_side, "summary": summary,
                "banners": banners}  # fmt: skip
    return save(
        args.out, args.name or "defaults", parameters=parameters, document=document,
        markdown=text,
    )  # fmt: skip
