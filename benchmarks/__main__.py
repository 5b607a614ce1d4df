"""``python -m benchmarks COMMAND``: the load-benchmark tool.

    python -m benchmarks suite --profile quick       # the suite (< 5 min on 2 cores)
    python -m benchmarks suite --profile full --scenarios resnet18 bert
    python -m benchmarks defaults                    # `serving serve` with no flags vs ORT
    python -m benchmarks control                     # how fast changes reach every replica
    python -m benchmarks batching                    # dynamic batching on and off
    python -m benchmarks latency                     # digits per protocol vs ORT
    python -m benchmarks memory                      # memory of `serving serve`
    python -m benchmarks observe                     # metrics and drift sampling on vs off
    python -m benchmarks drift                       # rows needed to catch a shift of d sd

Every command writes ``benchmarks/results/<name>.json`` (with commit, CPU, cores, library
versions and parameters) and ``<name>.md`` (``suite`` adds plots), and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from benchmarks import batching, control, defaults, drift, latency, memory, observe, suite

RESULTS = Path(__file__).parent / "results"
COMMANDS = {
    "suite": suite,
    "defaults": defaults,
    "control": control,
    "batching": batching,
    "latency": latency,
    "memory": memory,
    "observe": observe,
    "drift": drift,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        sub.add_argument("--name", default=None, help=f"report file name (default: {name})")
        sub.add_argument("--out", type=Path, default=RESULTS, help="report directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    files = COMMANDS[args.command].run(args)
    print("wrote", ", ".join(str(f) for f in files))


if __name__ == "__main__":
    main()
