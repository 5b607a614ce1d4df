"""How fast a change reaches every replica: model control through the controller.

    python -m benchmarks control [--changes 50] [--reloads 10] [--replicas 2]

Two replicas of the demo repository (embedded Ray, a CPU each). Each change is a model control
load through ``tritonclient.http``; it returns once every replica has applied it. Two kinds:
a config override that keeps the sessions (``digits``' labels change: a new scheduler over the
same sessions), and a reload of a changed model file (``digits`` version 1's file swapped with
version 2's and back: a new session, loaded, warmed up, swapped in, the old one drained). For
each, the controller's own clock gives the time from the revision's commit to every replica's
report of having applied it; the client's round trip is measured beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.load import table
from benchmarks.report import save
from benchmarks.server import deployed, embedded_ray

COLUMNS = [
    ("change", "change", ""),
    ("count", "changes", "d"),
    ("p50_ms", "p50 ms", ".1f"),
    ("p99_ms", "p99 ms", ".1f"),
    ("max_ms", "max ms", ".1f"),
]


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"count": len(values), "p50_ms": statistics.median(values), "p99_ms": p99,
            "max_ms": ordered[-1]}  # fmt: skip


def triton_config(document: dict[str, Any], labels: dict[str, str]) -> str:
    """``digits``' config.yaml as the Triton JSON a model control load carries."""
    return json.dumps({
        "max_batch_size": document["max_batch_size"],
        "version_policy": {"all": {}},
        "input": [{"name": t["name"], "data_type": f"TYPE_{t['datatype']}", "dims": t["dims"]}
                  for t in document["inputs"]],
        "parameters": {k: {"string_value": v} for k, v in labels.items()},
    })  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--changes", type=int, default=50, help="config changes (sessions kept)")
    parser.add_argument("--reloads", type=int, default=10, help="changed model files reloaded")
    parser.add_argument("--replicas", type=int, default=2)


def run(args: argparse.Namespace) -> list[Path]:
    import ray
    import tritonclient.http as httpclient

    from serving import demo
    from serving.control import cluster

    workdir = Path(tempfile.mkdtemp(prefix="bench-control-"))
    repository = workdir / "repo"
    shutil.copytree(demo.ensure() / "digits", repository / "digits")
    document = yaml.safe_load((repository / "digits" / "config.yaml").read_text())
    files = [(repository / "digits" / v / "model.onnx").read_bytes() for v in ("1", "2")]
    rounds: dict[str, list[float]] = {"config": [], "reload": []}
    revisions: dict[str, list[int]] = {"config": [], "reload": []}
    try:
        with (
            embedded_ray(),
            deployed(
                repository, "bench-control", replicas=args.replicas, replica_cpus=1.0
            ) as served,
        ):
            client = httpclient.InferenceServerClient(served.http)
            handle = cluster.controller("bench-control")

            def change(kind: str, **load: Any) -> None:
                began = time.perf_counter()
                client.load_model("digits", **load)
                rounds[kind].append((time.perf_counter() - began) * 1000)
                state = ray.get(handle.current.remote())
                revisions[kind].append(state.revision)

            for index in range(args.changes):
                labels = {**document["labels"], "change": str(index)}
                change("config", config=triton_config(document, labels))
            client.load_model("digits")  # back to the file's own config
            for index in range(args.reloads):
                (repository / "digits" / "1" / "model.onnx").write_bytes(files[(index + 1) % 2])
                change("reload")
            timings = ray.get(handle.timings.remote())
            replicas = len(ray.get(handle.replicas.remote()))
            client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = []
    for kind, label in (("config", "config override, sessions kept"),
                        ("reload", "changed model file, new session")):  # fmt: skip
        applied = []
        for revision in revisions[kind]:
            committed, seen = timings[revision]
            if len(seen) >= replicas:
                applied.append((max(seen.values()) - committed) * 1000)
        results.append({"change": f"{label}: commit → applied on every replica",
                        **quantiles(applied)})  # fmt: skip
        results.append({"change": f"{label}: client's load_model round trip",
                        **quantiles(rounds[kind])})  # fmt: skip
    text = f"# Changes reaching {replicas} replicas\n\n{table(results, COLUMNS, text_columns=1)}\n"
    print(text)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return save(
        args.out, args.name or "control", parameters=parameters,
        document={"results": results, "round_trips_ms": rounds}, markdown=text,
    )  # fmt: skip
