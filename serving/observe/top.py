"""``serving top``: rates and latency quantiles over the last refresh, from two summaries."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from serving.observe.stats import Histogram

SLO_S = 0.1


class TopView:
    def __init__(self) -> None:
        self._previous: dict[tuple[str, str], dict[str, Any]] = {}
        self._previous_at: float | None = None
        self._rows: list[dict[str, Any]] = []
        self._scaling: str = ""

    def update(self, summary: dict[str, Any], now: float) -> None:
        elapsed = None if self._previous_at is None else max(1e-9, now - self._previous_at)
        rows = []
        current = {}
        for version in summary["versions"]:
            key = (version["model"], version["version"])
            current[key] = version
            rows.append(self._row(version, self._previous.get(key), elapsed))
        self._previous, self._previous_at, self._rows = current, now, rows
        self._scaling = _scaling(summary.get("autoscaling"))

    @staticmethod
    def _row(
        version: dict[str, Any], before: dict[str, Any] | None, elapsed: float | None
    ) -> dict[str, Any]:
        stats = version["statistics"]
        counts = version["latency_counts"]
        ok = stats["inference_stats"]["success"]["count"]
        failed = stats["inference_stats"]["fail"]["count"]
        rows, executions = stats["inference_count"], stats["execution_count"]
        if before is not None and elapsed is not None:
            old = before["statistics"]
            ok -= old["inference_stats"]["success"]["count"]
            failed -= old["inference_stats"]["fail"]["count"]
            rows -= old["inference_count"]
            executions -= old["execution_count"]
            counts = [a - b for a, b in zip(counts, before["latency_counts"], strict=True)]
        histogram = Histogram(list(counts), 0)
        drift = version["drift"]
        latest = drift["latest"]
        if latest is None:
            shown = "gathering" if drift["reference"] is None else "-"
        else:
            shown = "DRIFT" if latest["detected"] else "ok"
        return {
            "model": version["model"],
            "version": version["version"],
            "rate": None if elapsed is None else (ok + failed) / elapsed,
            "errors": None if elapsed is None else failed / elapsed,
            "p50": histogram.quantile(0.5),
            "p99": histogram.quantile(0.99),
            "in_flight": version["in_flight"],
            "queued": version["queued"],
            "batch": rows / executions if executions else None,
            "replicas": version["replicas"],
            "traffic": _traffic(version.get("weight"), version.get("shadow", False)),
            "drift": shown,
        }

    def table(self) -> Table:
        window = "since start" if self._previous_at is None else "over the last refresh"
        table = Table(title=f"serving top: every replica, {window}", caption=self._scaling or None)
        for column in ("model", "version", "req/s", "err/s", "p50 ms", "p99 ms", "in flight",
                       "queued", "batch", "replicas", "traffic", "drift"):  # fmt: skip
            table.add_column(column, justify="left" if column in ("model", "drift") else "right")
        for row in self._rows:
            p99 = row["p99"]
            p99_text = _ms(p99)
            if p99 is not None and p99 > SLO_S:
                p99_text = f"[red]{p99_text}[/]"
            table.add_row(
                row["model"], row["version"], _num(row["rate"]), _num(row["errors"]),
                _ms(row["p50"]), p99_text, str(row["in_flight"]), str(row["queued"]),
                _num(row["batch"]), str(row["replicas"]), row["traffic"],
                f"[red]{row['drift']}[/]" if row["drift"] == "DRIFT" else row["drift"],
            )  # fmt: skip
        return table

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self._rows


def _scaling(reading: dict[str, Any] | None) -> str:
    """The autoscaler's last reading, in a line."""
    if not reading:
        return ""
    return (
        f"autoscaling: {reading['replicas']} replica(s) ({reading['min_replicas']}-"
        f"{reading['max_replicas']}), {reading['in_flight']:.1f} requests in flight at "
        f"{reading['target_in_flight']:g} each -> {reading['desired_replicas']} wanted"
    )


def _traffic(weight: float | None, shadow: bool) -> str:
    """The version's share of its model's traffic table ("-" without one), and whether it
    shadows."""
    shown = "-" if weight is None else f"{weight:g}%"
    return f"{shown} +shadow" if shadow else shown


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"
