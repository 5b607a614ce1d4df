"""The memory of ``serving serve`` with the demo repository, Ray included.

Starts the Quickstart's server (``serving serve``, embedded Ray) as a subprocess, sends every
demo model a few requests, under light load, then adds up the memory of the whole process tree
it started: the CLI (the Ray driver), Ray's GCS, raylet and agents, the Serve controller and the
replica. Reports the sum of RSS (each process's resident set, so shared libraries count once per
process: an over-estimate) and of PSS (shared pages split among the processes that map them:
what the tree really costs), per process and in total.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import table
from benchmarks.report import save
from benchmarks.server import command_line

TARGET_MIB = 1536.0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    tree = _children()
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def process_memory(pid: int) -> dict[str, Any] | None:
    """Name, RSS and PSS (MiB) of one process, or None if it has gone."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = {}
    for line in rollup.splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields[key.strip()] = int(rest.split()[0]) / 1024  # kB → MiB
    label = name
    if name.startswith("python") and len(cmdline) > 1:  # say which Python process it is
        script = next((Path(a.decode()).name for a in cmdline[1:] if a.endswith(b".py")), "")
        label = f"{name} {script}".strip()
    return {"pid": pid, "process": label, "rss_mib": fields.get("Rss", 0.0),
            "pss_mib": fields.get("Pss", 0.0)}  # fmt: skip


def _exercise(url: str, requests_per_model: int) -> int:
    """A few inferences on every ready demo model (zeros of each input's shape and type)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    sent = 0
    try:
        for model in client.get_model_repository_index():
            if model.get("state") != "READY":
                continue
            metadata = client.get_model_metadata(model["name"])
            inputs = []
            for spec in metadata["inputs"]:
                shape = [1 if d == -1 else d for d in spec["shape"]]
                tensor = httpclient.InferInput(spec["name"], shape, spec["datatype"])
                if spec["datatype"] == "BYTES":
                    data = np.full(shape, b"x", dtype=object)
                else:
                    data = np.zeros(shape, dtype=httpclient.triton_to_np_dtype(spec["datatype"]))
                tensor.set_data_from_numpy(data)
                inputs.append(tensor)
            for _ in range(requests_per_model):
                client.infer(model["name"], inputs)
                sent += 1
    finally:
        client.close()
    return sent


def measure_serve(requests_per_model: int = 50, settle_s: float = 5.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as state, command_line(state_dir=Path(state)) as served:
        assert served.pid is not None
        sent = _exercise(f"http://{served.http}", requests_per_model)
        time.sleep(settle_s)  # let start-up transients (prestarted workers, agents) settle
        tree = descendants(served.pid)
        rows = [m for pid in tree if (m := process_memory(pid)) is not None]
    rows.sort(key=lambda r: -r["pss_mib"])
    total_rss = sum(r["rss_mib"] for r in rows)
    total_pss = sum(r["pss_mib"] for r in rows)
    return {
        "command": "serving serve (demo repository, embedded Ray)",
        "requests_sent": sent,
        "processes": rows,
        "total_rss_mib": total_rss,
        "total_pss_mib": total_pss,
        "target_mib": TARGET_MIB,
        "pss_vs_target": total_pss / TARGET_MIB,
        "rss_vs_target": total_rss / TARGET_MIB,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(args: argparse.Namespace) -> list[Path]:
    result = measure_serve()
    shown = [*result["processes"],
             {"process": "**total**", "rss_mib": result["total_rss_mib"],
              "pss_mib": result["total_pss_mib"]}]  # fmt: skip
    columns = [("process", "process", ""), ("pid", "pid", ""), ("rss_mib", "RSS MiB", ".1f"),
               ("pss_mib", "PSS MiB", ".1f")]  # fmt: skip
    text = (
        f"# Memory of `serving serve` with the demo repository\n\n"
        f"{result['requests_sent']} requests sent first. Target: under {TARGET_MIB:.0f} MiB in "
        f"total. PSS total {result['total_pss_mib']:.0f} MiB "
        f"({result['pss_vs_target']:.2f} of the target); RSS total "
        f"{result['total_rss_mib']:.0f} MiB ({result['rss_vs_target']:.2f}; counts shared "
        f"libraries once per process).\n\n{table(shown, columns, text_columns=1)}\n"
    )
    print(text)
    return save(
        args.out, args.name or "memory", parameters={"benchmark": "memory"}, document=result,
        markdown=text,
    )  # fmt: skip
