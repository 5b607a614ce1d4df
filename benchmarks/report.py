"""Benchmark reports: JSON with context, a Markdown table, PNG plots of latency vs throughput."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.context import collect
from benchmarks.load import cell, table

COLUMNS = [
    ("scenario", "scenario", ""),
    ("protocol", "protocol", ""),
    ("batching", "batching", ""),
    ("replicas", "replicas", "d"),
    ("ingress", "ingress", ""),
    ("load", "load", ""),
    ("throughput_rps", "req/s", ".1f"),
    ("p50_ms", "p50 ms", ".2f"),
    ("p90_ms", "p90 ms", ".2f"),
    ("p99_ms", "p99 ms", ".2f"),
    ("max_ms", "max ms", ".2f"),
    ("vs_batch1", "÷ ORT batch 1", ".3f"),
    ("vs_best", "÷ ORT best batch", ".3f"),
    ("server_queue_ms", "server queue ms", ".2f"),
    ("server_compute_ms", "server compute ms", ".2f"),
    ("rows_per_execution", "rows/exec", ".1f"),
    ("error_count", "errors", "d"),
    ("client_cpu_cores", "client CPU", ".2f"),
]


def markdown(result: dict[str, Any]) -> str:
    shown = []
    for row in result["rows"]:
        load = (f"{row['concurrency']} in flight" if row["mode"] == "closed"
                else f"{row['rate']:.0f} req/s open")  # fmt: skip
        shown.append({**row, "load": load})
    lines = [table(shown, COLUMNS, text_columns=6)]
    lines += ["", "| scenario | in-process ORT batch 1 req/s | best batch | best layout "
              "| best req/s |", "|---|---:|---:|---|---:|"]  # fmt: skip
    for name, limit in result["in_process"].items():
        lines.append(f"| {name} | {limit['batch1_rps']:.1f} | {limit['best_batch']} "
                     f"| {limit.get('best_layout', '-')} | {limit['best_rps']:.1f} |")  # fmt: skip
    lines += ["", "| scenario | SLO goodput (p99 ≤ bound), answered req/s | offered req/s "
              "| bound ms | p99 ms there | ÷ ORT best batch | ÷ closed-loop saturation | probes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for entry in result["goodput"]:
        lines.append(
            f"| {entry['scenario']} | {entry['goodput_rps']:.1f} "
            f"| {entry.get('offered_rps', entry['goodput_rps']):.1f} | {entry['bound_ms']:g} "
            f"| {cell(entry['p99_ms'], '.2f')} | {entry['vs_best']:.3f} "
            f"| {entry['vs_saturation']:.3f} | {len(entry['probes'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], directory: Path, name: str) -> list[Path]:
    """One PNG per scenario: p50 and p99 latency against throughput, a line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for scenario in sorted({r["scenario"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["scenario"] == scenario]
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)

        def key(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r["protocol"], r["batching"], r["replicas"], r["mode"], r["ingress"])

        for config in sorted({key(r) for r in rows}):
            ordered = sorted(
                (r for r in rows if key(r) == config),
                key=lambda r: r["rate"] if r["mode"] == "open" else r["concurrency"],
            )  # by offered load: an overloaded open loop delivers less than it offers
            points = [(r["throughput_rps"], r["p50_ms"], r["p99_ms"]) for r in ordered]
            label = f"{config[0]}, batching {config[1]}, {config[2]} repl., {config[3]} loop"
            label += ", via Ray Serve proxy" if config[4] != "direct" else ""
            for axis, column in zip(axes, (1, 2), strict=True):
                axis.plot([p[0] for p in points], [p[column] for p in points], marker="o",
                          label=label)  # fmt: skip
        limit = result["in_process"].get(scenario)
        for axis, title in zip(axes, ("p50", "p99"), strict=True):
            axis.set_title(f"{scenario}: {title} latency vs throughput")
            axis.set_xlabel("throughput (req/s)")
            axis.set_ylabel(f"{title} latency (ms)")
            axis.set_yscale("log")
            axis.grid(True, which="both", alpha=0.3)
            if not limit:
                continue
            if limit["best_rps"] <= 3 * max(r["throughput_rps"] for r in rows):
                axis.axvline(limit["best_rps"], color="grey", linestyle="--",
                             label=f"in-process ORT best ({limit['best_rps']:.0f}/s)")  # fmt: skip
            else:  # far off the chart: say it rather than squash the curves
                axis.set_title(f"{scenario}: {title} vs throughput "
                               f"(in-process ORT: {limit['best_rps']:,.0f}/s)")  # fmt: skip
        axes[1].legend(fontsize=7, loc="best")
        figure.tight_layout()
        path = directory / f"{name}-{scenario}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        files.append(path)
    return files


def save(
    directory: Path,
    name: str,
    *,
    parameters: dict[str, Any],
    document: dict[str, Any],
    markdown: str,
) -> list[Path]:
    """The one report writer: ``<name>.json`` (``document`` under the run's context: commit,
    hardware, library versions, ``parameters``) and ``<name>.md``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{name}.json"
    full = {"context": collect(parameters), **document}
    json_path.write_text(json.dumps(full, indent=2, default=str))
    md_path = directory / f"{name}.md"
    md_path.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    return [json_path, md_path]


def write(
    result: dict[str, Any], directory: Path, name: str, parameters: dict[str, Any]
) -> list[Path]:
    """The suite's report: JSON, its tables, one plot per scenario."""
    files = save(directory, name, parameters=parameters, document=result, markdown=markdown(result))
    return [*files, *plot(result, directory, name)]
