"""The ``serving`` command line."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from serving.config import ServerConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def serve(
    repository: Path | None = typer.Argument(
        None, help="Model repository; the built-in demo repository when left out."
    ),
    host: str = typer.Option("0.0.0.0", help="Address to bind."),
    http_port: int = typer.Option(8000, "--http-port", help="KServe v2 HTTP port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="KServe v2 gRPC port."),
    address: str | None = typer.Option(
        None, help="Ray cluster address (else RAY_ADDRESS, else an embedded Ray)."
    ),
    replicas: int = typer.Option(1, min=1, help="Server replicas; they share the ports."),
    replica_cpus: float = typer.Option(1.0, help="CPUs per replica (ONNX Runtime threads)."),
    log_level: str = typer.Option("info", help="Log level."),
) -> None:
    """Serve a model repository over KServe v2 until Ctrl-C."""
    _configure_logging(log_level)
    from serving import demo, deployment

    if repository is None:
        console.print("Preparing the demo repository…")
        repository = demo.ensure()
    config = ServerConfig(
        repository=repository.resolve(),
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        replicas=replicas,
        replica_cpus=replica_cpus,
    )
    deployment.connect(address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        deployment.deploy(config)
        _print_endpoints(config)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        console.print("Shutting down…")
        deployment.shutdown()


def _print_endpoints(config: ServerConfig) -> None:
    shown = "localhost" if config.host in ("0.0.0.0", "::") else config.host
    console.print(f"[bold green]Serving[/] {config.repository}")
    console.print(f"  HTTP  http://{shown}:{config.http_port}/v2")
    console.print(f"  gRPC  {shown}:{config.grpc_port}  (inference.GRPCInferenceService)")
    ones, twos = ",".join(["1"] * 16), ",".join(["2"] * 16)
    body = (
        '{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[' + ones + "]},"
        '{"name":"INPUT1","shape":[1,16],"datatype":"FP32","data":[' + twos + "]}]}"
    )
    console.print("Try:")
    console.print(
        f"  curl -s -X POST http://{shown}:{config.http_port}/v2/models/add_sub/infer -d '{body}'",
        soft_wrap=True,
        highlight=False,
    )
    console.print("Press Ctrl-C to stop.")


@app.command()
def validate(
    repository: Path = typer.Argument(..., help="Model repository to check."),
) -> None:
    """Load every model, run a sample inference, and exit non-zero on any problem."""
    _configure_logging("error")
    from serving.models import ModelHost
    from serving.runtimes.onnx import ONNXRuntime, SessionOptions

    options = SessionOptions()
    with ThreadPoolExecutor(max_workers=1) as executor:
        try:
            host = ModelHost.load(
                repository,
                lambda path, cfg: ONNXRuntime(
                    path, providers=cfg.execution_providers, options=options
                ),
                executor,
            )
        except FileNotFoundError as error:
            console.print(f"[red]{error}[/]")
            raise typer.Exit(2) from None
    table = Table(title=f"Model repository {repository}")
    for column in ("model", "version", "state", "sha256", "problem"):
        table.add_column(column)
    problems = 0
    for entry in host.entries:
        if entry.error or not entry.versions:
            problems += 1
            table.add_row(entry.name, "-", "[red]UNAVAILABLE[/]", "", entry.error or "no versions")
        for version in sorted(entry.versions.values(), key=lambda v: v.version):
            state = "[green]READY[/]" if version.ready else "[red]UNAVAILABLE[/]"
            problems += 0 if version.ready else 1
            sha = (version.sha256 or "")[:12]
            table.add_row(entry.name, str(version.version), state, sha, version.reason)
    host.close()
    console.print(table)
    if problems:
        console.print(f"[red]{problems} problem(s) found[/]")
        raise typer.Exit(1)
    console.print("[green]all models loaded and answered a sample inference[/]")


@app.command("demo")
def demo_command(
    path: Path = typer.Argument(..., help="Where to write the demo repository (must not exist)."),
) -> None:
    """Write the built-in demo repository to PATH."""
    from serving import demo

    demo.build(path)
    console.print(f"demo repository written to {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
