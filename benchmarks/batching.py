"""Dynamic batching on and off, for ``digits`` and a ResNet-18-shaped CNN, beside in-process ORT.

    python -m benchmarks.batching [--seconds 6] [--concurrency 1 4 16 64] [--protocol http_binary]

One server replica with every core (ONNX Runtime threads = cores), closed loop, one sample per
request. The in-process figure is ONNX Runtime in this process at its best batch size (swept),
with the same thread count: the ceiling for server throughput. Writes JSON and Markdown under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.context import collect
from benchmarks.load import PROTOCOLS, Target, free_ports, in_process, table
from benchmarks.measure import closed_loop
from benchmarks.models import resnet18, save

RESULTS = Path(__file__).parent / "results"
BATCH_SWEEP = (1, 2, 4, 8, 16)
BATCHING = {
    "digits": {"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_ms": 0}},
    "resnet18": {"max_batch_size": 16, "dynamic_batching": {"max_queue_delay_ms": 0}},
}
COLUMNS = [
    ("model", "model", ""),
    ("batching", "batching", ""),
    ("concurrency", "concurrency", "d"),
    ("p50_ms", "p50 ms", ".2f"),
    ("p99_ms", "p99 ms", ".2f"),
    ("throughput_rps", "req/s", ".1f"),
    ("vs_in_process", "ratio to in-process best", ".2f"),
    ("rows_per_execution", "rows/execution", ".1f"),
    ("error_count", "errors", "d"),
    ("client_cpu_cores", "client CPU (cores)", ""),
]


def build_repository(root: Path) -> Path:
    from serving import demo

    source = demo.ensure()
    shutil.copytree(source / "digits" / "2", root / "digits" / "1")
    save(resnet18(), root / "resnet18" / "1" / "model.onnx")
    for model, config in BATCHING.items():
        unbatched = {"max_batch_size": config["max_batch_size"]}
        (root / model / "config.yaml").write_text(yaml.safe_dump(unbatched))
        shutil.copytree(root / model / "1", root / f"{model}_batched" / "1")
        (root / f"{model}_batched" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def targets(repository: Path) -> dict[str, Target]:
    digits = np.load(demo_eval(repository))["inputs"].astype(np.float32)
    images = np.random.default_rng(0).normal(size=(8, 1, 3, 224, 224)).astype(np.float32)
    return {
        "digits": Target("digits", "input", "FP32", digits[:, None, :], ("probabilities", "label")),
        "resnet18": Target("resnet18", "input", "FP32", images, ("logits",)),
    }


def demo_eval(repository: Path) -> Path:
    from serving import demo

    return demo.ensure() / "digits" / "evaluation.npz"


def executions(urls: dict[str, str], model: str) -> tuple[int, int]:
    import tritonclient.http as httpclient

    stats = httpclient.InferenceServerClient(urls["http"]).get_inference_statistics(model)
    entry = stats["model_stats"][0]
    return entry["inference_count"], entry["execution_count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http_binary")
    parser.add_argument("--models", nargs="+", choices=list(BATCHING), default=list(BATCHING))
    parser.add_argument("--name", default="batching")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from serving import deployment
    from serving.config import ServerConfig

    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    repository = build_repository(workdir / "repo")
    loads = targets(repository)
    http_port, grpc_port = free_ports(2)
    config = ServerConfig(
        repository=repository, host="127.0.0.1", http_port=http_port, grpc_port=grpc_port,
        replicas=1, replica_cpus=float(cores),
    )  # fmt: skip
    urls = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}

    results: list[dict[str, Any]] = []
    ceilings: dict[str, dict[str, Any]] = {}
    for model in args.models:
        sweep = [
            in_process(repository / model / "1" / "model.onnx", loads[model],
                       threads=config.intra_op_threads, batch=b, seconds=3.0)
            for b in BATCH_SWEEP
        ]  # fmt: skip
        best = max(sweep, key=lambda r: r["throughput_rps"])
        ceilings[model] = {"best_batch": best["batch"], "throughput_rps": best["throughput_rps"],
                           "batch1_p99_ms": sweep[0]["p99_ms"], "sweep": sweep}  # fmt: skip
        results.append({"model": model, "batching": f"in-process ORT, batch {best['batch']}",
                        "concurrency": "-", **best, "vs_in_process": 1.0})  # fmt: skip

    deployment.connect()
    deployment.deploy(config, name="bench")
    try:
        for model in args.models:
            for batched in (False, True):
                name = f"{model}_batched" if batched else model
                target = Target(name, loads[model].input_name, "FP32", loads[model].samples,
                                loads[model].outputs)  # fmt: skip
                for concurrency in args.concurrency:
                    before = executions(urls, name)
                    figures = closed_loop(args.protocol, urls, target, concurrency, args.seconds)
                    after = executions(urls, name)
                    rows = after[0] - before[0]
                    runs = max(1, after[1] - before[1])
                    results.append({
                        "model": model,
                        "batching": "on" if batched else "off",
                        "concurrency": concurrency,
                        **figures,
                        "vs_in_process": figures["throughput_rps"]
                        / ceilings[model]["throughput_rps"],
                        "rows_per_execution": rows / runs,
                    })  # fmt: skip
    finally:
        deployment.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    rendered = table(results, COLUMNS)
    print(rendered)
    args.out.mkdir(parents=True, exist_ok=True)
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    parameters["batching_configs"] = BATCHING
    report = {"context": collect(parameters), "in_process": ceilings, "results": results}
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(rendered + "\n")


if __name__ == "__main__":
    main()
