"""``python -m benchmarks.memory``: the memory of ``serving serve`` with the demo repository.

Starts the Quickstart's server (``serving serve``, embedded Ray) as a subprocess, sends every
demo model a few requests, under light load, then adds up the memory of the whole process tree
it started: the CLI (the Ray driver), Ray's GCS, raylet and agents, the Serve controller and the
replica. Reports the sum of RSS (each process's resident set, so shared libraries count once per
process: an over-estimate) and of PSS (shared pages split among the processes that map them:
what the tree really costs), per process and in total.

Writes ``benchmarks/results/memory.json`` and ``memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.context import collect
from benchmarks.load import free_ports, table

RESULTS = Path(__file__).parent / "results"
TARGET_MIB = 1536.0
READY_TIMEOUT_S = 180.0


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


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serving serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server not ready within {READY_TIMEOUT_S} s")


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
    http_port, grpc_port = free_ports(2)
    command = [sys.executable, "-m", "serving.cli", "serve", "--host", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port)]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_ready(url, process)
        sent = _exercise(url, requests_per_model)
        time.sleep(settle_s)  # let start-up transients (prestarted workers, agents) settle
        rows = [m for pid in descendants(process.pid) if (m := process_memory(pid)) is not None]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="memory")
    args = parser.parse_args()
    result = measure_serve()
    report = {"context": collect({"benchmark": "memory"}), **result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
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
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
