"""``python -m benchmarks``: the load-benchmark suite against a server it starts on embedded Ray.

    python -m benchmarks --profile quick            # < 5 min on 2 cores
    python -m benchmarks --profile full --scenarios resnet18 bert

Writes ``benchmarks/results/<name>.json`` (with commit, CPU, cores, library versions and
parameters), ``<name>.md`` and ``<name>-<scenario>.png``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks.load import free_ports
from benchmarks.report import write
from benchmarks.suite import PROFILES, SCENARIOS, build_repository, run

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--profile", choices=list(PROFILES), default="quick")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS))
    parser.add_argument("--name", help="report file name (default: the profile's name)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from serving import deployment
    from serving.config import ServerConfig

    profile = PROFILES[args.profile]
    scenarios = tuple(args.scenarios or profile.scenarios)
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    repository = build_repository(workdir / "repo", scenarios)
    servers: dict[int, dict[str, str]] = {}
    (proxy_port,) = free_ports(1)
    deployment.connect(num_cpus=max(8, 2 * cores), proxy=("127.0.0.1", proxy_port))
    try:

        def config_for(replicas: int, ports: tuple[int, int] = (0, 0)) -> ServerConfig:
            return ServerConfig(
                repository=repository, host="127.0.0.1", http_port=ports[0], grpc_port=ports[1],
                replicas=replicas, replica_cpus=cores / replicas,
            )  # fmt: skip

        for replicas in profile.replicas:
            http_port, grpc_port = free_ports(2)
            deployment.deploy(
                config_for(replicas, (http_port, grpc_port)), name=f"bench-{replicas}"
            )
            servers[replicas] = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
        proxy = None
        if profile.proxy:
            deployment.deploy_behind_proxy(config_for(1), name="bench-proxied")
            proxy = {"http": f"127.0.0.1:{proxy_port}"}
        result = run(profile, repository, servers, threads=cores, scenarios=scenarios, proxy=proxy)
    finally:
        deployment.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    parameters = {"profile": profile.__dict__, "scenarios": scenarios, "cores": cores}
    files = write(result, args.out, args.name or profile.name, parameters)
    print((args.out / f"{args.name or profile.name}.md").read_text())
    print("wrote", ", ".join(str(f) for f in files))


if __name__ == "__main__":
    main()
