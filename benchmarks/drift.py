"""How many sampled rows drift detection needs, at the server's default settings.

    python -m benchmarks drift [--trials 200] [--features 32]

Simulated with the server's own code (``serving.observe.drift``): a reference profile from
``reference_rows`` rows of N(0, 1) features, then sampled rows fed in chunks of 50 (as replicas
report them) into the same windows the controller scores. One feature's mean moves by δ
standard deviations at a random point inside a window; a trial counts the sampled rows from
the shift to the first window that raises the alarm. δ = 0 measures false alarms per window.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import table
from benchmarks.report import save

SHIFTS = (0.1, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0)
CHUNK = 50
COLUMNS = [
    ("shift", "shift (sd)", ".2f"),
    ("trials", "trials", "d"),
    ("detected", "caught", ".3f"),
    ("median_rows", "median rows to catch", ".0f"),
    ("p90_rows", "p90 rows", ".0f"),
    ("max_rows", "most rows", ".0f"),
]


def trial(
    rng: np.random.Generator, settings: Any, features: int, shift: float, limit: int
) -> int | None:
    from serving.observe.drift import DriftMonitor, Profile, add_counts

    reference = rng.normal(size=(settings.reference_rows, features))
    profile = Profile.from_data({"x": reference}, {}, source="simulated")
    monitor = DriftMonitor(profile, settings)
    tensor = profile.tensors["x"]
    cumulative: dict[str, list[np.ndarray]] = {}
    start = int(rng.integers(0, settings.window_rows // CHUNK)) * CHUNK
    for done in range(CHUNK, start + limit + 1, CHUNK):
        rows = rng.normal(size=(CHUNK, features))
        if done > start:
            rows[:, 0] += shift
        add_counts(cumulative, {"x": tensor.bin(rows)})
        result = monitor.update(cumulative, now=float(done))
        if result is not None and result.detected and done > start:
            return done - start
    return None


def false_alarms(rng: np.random.Generator, settings: Any, features: int, windows: int) -> float:
    from serving.observe.drift import DriftMonitor, Profile, add_counts

    alarms = 0
    runs = max(1, windows // 20)
    for _ in range(runs):
        profile = Profile.from_data(
            {"x": rng.normal(size=(settings.reference_rows, features))}, {}, source="simulated"
        )
        monitor = DriftMonitor(profile, settings)
        cumulative: dict[str, list[np.ndarray]] = {}
        for done in range(
            settings.window_rows, 20 * settings.window_rows + 1, settings.window_rows
        ):
            add_counts(cumulative, {"x": profile.tensors["x"].bin(
                rng.normal(size=(settings.window_rows, features)))})  # fmt: skip
            result = monitor.update(cumulative, now=float(done))
            alarms += bool(result is not None and result.detected)
    return alarms / (runs * 20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--limit", type=int, default=20_000, help="rows after the shift")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> list[Path]:
    from serving.config import ServerConfig

    settings = ServerConfig(repository=Path(".")).drift_settings()
    rng = np.random.default_rng(args.seed)
    rows = []
    for shift in SHIFTS:
        caught = [
            trial(rng, settings, args.features, shift, args.limit) for _ in range(args.trials)
        ]
        found = np.array([c for c in caught if c is not None], dtype=float)
        rows.append({
            "shift": shift,
            "trials": args.trials,
            "detected": len(found) / args.trials,
            "median_rows": float(np.median(found)) if len(found) else float("nan"),
            "p90_rows": float(np.quantile(found, 0.9)) if len(found) else float("nan"),
            "max_rows": float(found.max()) if len(found) else float("nan"),
        })  # fmt: skip
    alarm_rate = false_alarms(rng, settings, args.features, 20 * args.trials)
    text = "\n".join(
        [
            "# Drift detection: sampled rows to catch a mean shift of one feature",
            "",
            f"Defaults: windows of {settings.window_rows} sampled rows, family-wise alpha = "
            f"{settings.alpha} per window (Bonferroni over {args.features} features), reference "
            f"of {settings.reference_rows} rows, 10 quantile bins per feature, χ² test of "
            f"homogeneity. Requests are sampled at {settings.sample_fraction:.0%}: a server "
            f"needs {1 / settings.sample_fraction:.0f} times as many requests (of one row) as "
            "the rows below.",
            "",
            f"False alarms per window of undrifted traffic: {alarm_rate:.4f} "
            f"({20 * args.trials} windows).",
            "",
            f"Caught = share of trials caught within {args.limit} rows after the shift.",
            "",
            table(rows, COLUMNS, text_columns=0),
            "",
        ]
    )
    print(text)
    parameters = {"trials": args.trials, "features": args.features, "limit": args.limit,
                  "seed": args.seed, "settings": settings.__dict__}  # fmt: skip
    document = {"rows": rows, "false_alarms_per_window": alarm_rate}
    return save(args.out, args.name or "drift", parameters=parameters, document=document,
                markdown=text)  # fmt: skip
