"""What observability costs: `serving serve` with metrics and drift sampling at their defaults
beside the same server with both off, up at once, read in alternating windows.

    python -m benchmarks observe [--rounds 8] [--concurrency 16] [--seconds 3]

``digits`` closed loop over gRPC (and HTTP binary) at ``--concurrency`` in flight, each
server's windows interleaved so both see the same machine; the ratio is on / off per round.
Also: the time one scrape of ``/metrics`` takes, and the cost of recording one request in a
statistics window, measured in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx

from benchmarks.defaults import digits_target
from benchmarks.load import table
from benchmarks.measure import Plan, measure_apart, spread
from benchmarks.report import save
from benchmarks.server import command_line

VARIANTS: dict[str, tuple[str, ...]] = {
    "on (defaults)": (),
    "off": ("--no-metrics", "--drift-sample-fraction", "0"),
}
COLUMNS = [
    ("run", "round", "d"),
    ("server", "server", ""),
    ("protocol", "protocol", ""),
    ("concurrency", "in flight", "d"),
    ("throughput_rps", "req/s", ".1f"),
    ("p50_ms", "p50 ms", ".3f"),
    ("p99_ms", "p99 ms", ".3f"),
    ("error_count", "errors", "d"),
]
SUMMARY_COLUMNS = [
    ("what", "measured", ""),
    ("runs", "rounds", "d"),
    ("median", "median", ".4f"),
    ("low", "lowest", ".4f"),
    ("high", "highest", ".4f"),
]


def record_cost_us() -> dict[str, float]:
    """Microseconds to record one answered request in a window (what every request pays)."""
    from serving.observe.stats import StatsWindow

    window = StatsWindow()

    def record() -> None:
        window.record("grpc", 200, 300_000, rows=1, input_ns=10_000, queue_ns=0, infer_ns=200_000)

    n = 200_000
    best = min(timeit.repeat(record, number=n, repeat=5))
    return {"record_us": best / n * 1e6}


def scrape_ms(url: str, times: int = 20) -> float:
    with httpx.Client(timeout=10) as client:
        client.get(f"http://{url}/metrics")
        began = time.perf_counter()
        for _ in range(times):
            assert client.get(f"http://{url}/metrics").status_code == 200
        return (time.perf_counter() - began) / times * 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement window")


def run(args: argparse.Namespace) -> list[Path]:
    from serving import demo

    repository = demo.ensure()
    target = digits_target(repository)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = []
        for label, flags in VARIANTS.items():
            state = stack.enter_context(tempfile.TemporaryDirectory())
            served = stack.enter_context(
                command_line(repository, arguments=flags, state_dir=Path(state))
            )
            servers.append((label, served))
        for index in range(args.rounds):
            for label, served in servers[:: 1 if index % 2 == 0 else -1]:
                for protocol in ("grpc", "http_binary"):
                    plan = Plan(protocol, concurrency=args.concurrency, window_s=args.seconds,
                                max_windows=4, warmup_s=1.0)  # fmt: skip
                    figures = measure_apart(plan, served.urls, target)
                    rows.append({"run": index + 1, "server": label, "protocol": protocol,
                                 **figures})  # fmt: skip
        on = dict(servers)["on (defaults)"]
        assert on.metrics is not None
        scrape = scrape_ms(on.metrics)
    summary = []
    for protocol in ("grpc", "http_binary"):
        ratios = []
        for index in range(args.rounds):
            by = {
                r["server"]: r for r in rows if r["run"] == index + 1 and r["protocol"] == protocol
            }
            ratios.append(by["on (defaults)"]["throughput_rps"] / by["off"]["throughput_rps"])
        summary.append({"what": f"{protocol} req/s, on ÷ off", "runs": len(ratios),
                        **spread(ratios)})  # fmt: skip
        for label in VARIANTS:
            values = [r["throughput_rps"] for r in rows
                      if r["server"] == label and r["protocol"] == protocol]  # fmt: skip
            summary.append({"what": f"{protocol} req/s, {label}", "runs": len(values),
                            **spread(values)})  # fmt: skip
    costs = record_cost_us()
    text = "\n".join(
        [
            "# Observability overhead: metrics and drift sampling at their defaults vs off",
            "",
            f"`digits`, {args.concurrency} in flight, closed loop; both servers up at once "
            "(`serving serve` with only ports given, and with `--no-metrics "
            "--drift-sample-fraction 0`), windows alternating.",
            "",
            table(summary, SUMMARY_COLUMNS, text_columns=1),
            "",
            f"One scrape of `/metrics` (the demo repository, one replica): {scrape:.2f} ms. "
            f"Recording one request in its window: {costs['record_us']:.2f} µs.",
            "",
            table(rows, COLUMNS, text_columns=3),
            "",
        ]
    )
    print(text)
    parameters = {"rounds": args.rounds, "concurrency": args.concurrency,
                  "seconds": args.seconds}  # fmt: skip
    document = {
        "rows": rows,
        "summary": summary,
        "scrape_ms": scrape,
        **costs,
        "ratio_median": {s["what"]: s["median"] for s in summary if "÷" in s["what"]},
    }
    return save(args.out, args.name or "observe", parameters=parameters, document=document,
                markdown=text)  # fmt: skip
