"""The ``serving`` command line."""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import typer
import yaml
from rich.console import Console
from rich.table import Table

from serving.config import AutoscalingConfig, ServerConfig
from serving.security import auth
from serving.traffic.cli import call, rollout_app, traffic_app

if TYPE_CHECKING:
    from serving.models.spec import DesiredState

APP_NAME = "serving"

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.add_typer(traffic_app, name="traffic")
app.add_typer(rollout_app, name="rollout")
console = Console()


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def default_state_file(repository: Path, app_name: str) -> Path:
    """Where an embedded server keeps its desired state: one file per application and
    repository, under ``$XDG_STATE_HOME`` (``~/.local/state``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = hashlib.sha256(str(repository).encode()).hexdigest()[:12]
    return Path(base) / "serving" / f"{app_name}-{digest}.json"


def _resources(values: list[str]) -> dict[str, float]:
    resources = {}
    for value in values:
        name, _, amount = value.partition("=")
        try:
            resources[name] = float(amount)
        except ValueError:
            raise typer.BadParameter(f"expected NAME=AMOUNT, got '{value}'") from None
    return resources


@app.command()
def serve(
    repository: Path | None = typer.Argument(
        None, help="Model repository; the built-in demo repository when left out."
    ),
    host: str = typer.Option("0.0.0.0", help="Address to bind."),
    http_port: int = typer.Option(
        8000, "--http-port", envvar="SERVING_HTTP_PORT", help="KServe v2 HTTP port."
    ),
    grpc_port: int = typer.Option(
        8001, "--grpc-port", envvar="SERVING_GRPC_PORT", help="KServe v2 gRPC port."
    ),
    metrics_port: int = typer.Option(
        8002,
        "--metrics-port",
        envvar="SERVING_METRICS_PORT",
        help="Prometheus /metrics port (each node answers for itself).",
    ),
    no_metrics: bool = typer.Option(False, "--no-metrics", help="Serve no /metrics."),
    metrics_triton: bool = typer.Option(
        False, "--metrics-triton", help="Also expose Triton's metric names (nv_inference_*)."
    ),
    drift_sample_fraction: float = typer.Option(
        0.1,
        "--drift-sample-fraction",
        min=0.0,
        max=1.0,
        help="Fraction of requests sampled for drift detection (0: off).",
    ),
    access_log: bool = typer.Option(
        False, "--access-log", help="Log every inference request as one JSON line."
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster address (else RAY_ADDRESS, else an embedded Ray)."
    ),
    replicas: int | None = typer.Option(
        None, min=1, help="Server replicas (they share the ports). Default: sized to the CPUs."
    ),
    max_replicas: int | None = typer.Option(
        None,
        min=1,
        help="Autoscale: at most this many replicas, following the requests in flight.",
    ),
    min_replicas: int = typer.Option(1, min=1, help="Autoscale: at least this many replicas."),
    target_in_flight: float = typer.Option(
        8.0, min=0.01, help="Autoscale: requests in flight per replica to aim at."
    ),
    downscale_delay_s: float = typer.Option(
        60.0, min=0, help="Autoscale: how long the load must be low before a replica goes."
    ),
    replica_cpus: float | None = typer.Option(
        None, help="CPUs per replica (ONNX Runtime threads follow). Default: sized to the nodes."
    ),
    replica_gpus: float | None = typer.Option(
        None,
        min=0,
        help="GPUs per replica (fractions share a GPU). Default: one per replica, one replica "
        "per GPU, where the nodes have GPUs.",
    ),
    replica_resource: list[str] = typer.Option(
        [], "--replica-resource", help="A custom Ray resource each replica needs: NAME=AMOUNT."
    ),
    model_control_mode: str = typer.Option(
        "explicit",
        "--model-control-mode",
        help="explicit: load/unload through the API; none: fixed at start; poll: follow the "
        "repository.",
    ),
    load_model: list[str] = typer.Option(
        [],
        "--load-model",
        help="explicit mode: a model to load at start (repeatable; default all).",
    ),
    repository_poll_s: float = typer.Option(
        15.0, "--repository-poll-s", help="poll mode: seconds between repository scans."
    ),
    state_file: Path | None = typer.Option(
        None,
        help="Where the model control state is kept between runs (embedded Ray default: "
        "under ~/.local/state/serving).",
    ),
    fresh: bool = typer.Option(False, help="Ignore the saved model control state."),
    auth_file: Path | None = typer.Option(
        None,
        "--auth-file",
        envvar="SERVING_AUTH_FILE",
        help="Tokens file: with it every call but health needs 'Authorization: Bearer'. "
        "Tokens can also come (hashed at start) from the SERVING_TOKENS variable.",
    ),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", help="PEM certificate: HTTP and gRPC speak only TLS."
    ),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="The certificate's PEM key."),
    tls_client_ca: Path | None = typer.Option(
        None, "--tls-client-ca", help="PEM CA bundle: clients must present a certificate (mTLS)."
    ),
    log_level: str = typer.Option("info", help="Log level."),
) -> None:
    """Serve a model repository over KServe v2 until Ctrl-C."""
    _configure_logging(log_level)
    from serving.control import cluster

    embedded = not (address or os.environ.get("RAY_ADDRESS"))
    config = _server_config(locals(), embedded=embedded)
    cluster.connect(address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        deployed, sizing = cluster.deploy(config, name=APP_NAME)
        _print_banner(deployed, sizing.describe(), cluster.current_state(APP_NAME))
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        console.print("Shutting down…")
        cluster.shutdown()


def config_command(check: Path | None = None, name: str = APP_NAME, **options: Any) -> None:
    """Print the Ray Serve config (YAML) that deploys what `serving serve` would with the same
    arguments, for `serve deploy` or a RayService's serveConfigV2; --check FILE checks one
    instead (every key, and the server's arguments), exit 1 naming each problem."""
    from serving.control import serveconfig

    if check is not None:
        try:
            document = yaml.safe_load(check.read_text())
        except (OSError, yaml.YAMLError) as error:
            console.print(f"[red]{check}: {error}[/]", highlight=False)
            raise typer.Exit(2) from None
        problems = serveconfig.check(document)
        for problem in problems:
            console.print(f"[red]{check}: {problem}[/]", highlight=False)
        if problems:
            raise typer.Exit(1)
        console.print(f"{check}: ok", highlight=False)
        return
    config = _server_config(options, embedded=False)
    typer.echo(serveconfig.render(config, name=name), nl=False)


def _config_signature() -> inspect.Signature:
    """``serve``'s options, and ``--check`` and ``--name``."""
    extra = [
        inspect.Parameter(
            "check",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, help="Check this config file instead of writing one."),
            annotation=Path | None,
        ),
        inspect.Parameter(
            "name",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(APP_NAME, help="The application's name."),
            annotation=str,
        ),
    ]
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(serve).parameters.values()
        if p.name not in ("log_level", "address")
    ]
    return inspect.Signature([*extra, *own])


config_command.__signature__ = _config_signature()  # type: ignore[attr-defined]
app.command("config")(config_command)


def _server_config(options: dict[str, Any], *, embedded: bool) -> ServerConfig:
    """The server config that ``serve``'s ``options`` (its arguments, by name) ask for."""
    from serving import demo

    repository = options["repository"]
    if repository is None:
        Console(stderr=True).print("Preparing the demo repository…", highlight=False)
        repository = demo.ensure()
    repository = repository.resolve()
    state_file = options["state_file"]
    if state_file is None and embedded:
        state_file = default_state_file(repository, APP_NAME)
    auth_file = _absolute(options["auth_file"])
    try:
        auth_tokens = auth.environment_credentials()
        if auth_file is not None and embedded:
            auth.read_credentials(auth_file)  # fail here, not in every replica
    except auth.CredentialsError as error:
        raise typer.BadParameter(str(error)) from None
    max_replicas = options["max_replicas"]
    if max_replicas is None and (
        options["min_replicas"] != 1
        or options["target_in_flight"] != 8.0
        or options["downscale_delay_s"] != 60.0
    ):
        raise typer.BadParameter(
            "--min-replicas, --target-in-flight and --downscale-delay-s shape autoscaling: "
            "give --max-replicas too"
        )
    try:
        return ServerConfig(
            repository=repository,
            host=options["host"],
            http_port=options["http_port"],
            grpc_port=options["grpc_port"],
            metrics_port=None if options["no_metrics"] else options["metrics_port"],
            metrics_triton=options["metrics_triton"],
            access_log=options["access_log"],
            drift_sample_fraction=options["drift_sample_fraction"],
            replicas=options["replicas"],
            autoscaling=None
            if max_replicas is None
            else AutoscalingConfig(
                min_replicas=options["min_replicas"],
                max_replicas=max_replicas,
                target_in_flight=options["target_in_flight"],
                downscale_delay_s=options["downscale_delay_s"],
            ),
            replica_cpus=options["replica_cpus"],
            replica_gpus=options["replica_gpus"],
            replica_resources=_resources(options["replica_resource"]),
            model_control_mode=options["model_control_mode"],
            load_models=tuple(options["load_model"]),
            repository_poll_s=options["repository_poll_s"],
            state_file=state_file,
            resume=not options["fresh"],
            auth_file=auth_file,
            auth_tokens=auth_tokens,
            tls_cert_file=_absolute(options["tls_cert"]),
            tls_key_file=_absolute(options["tls_key"]),
            tls_client_ca_file=_absolute(options["tls_client_ca"]),
        )
    except pydantic.ValidationError as error:
        raise typer.BadParameter(str(error)) from None


def _absolute(path: Path | None) -> Path | None:
    """A path the replicas (other processes, with other working directories) can open."""
    return None if path is None else path.expanduser().absolute()


def _print_banner(config: ServerConfig, sizing: str, state: DesiredState) -> None:
    shown = "localhost" if config.host in ("0.0.0.0", "::") else config.host
    scheme = "https" if config.tls_cert_file is not None else "http"
    console.print(f"[bold green]Serving[/] {config.repository}")
    console.print(f"  {sizing}")
    console.print(f"  model control: {config.model_control_mode}")
    console.print(f"  access: {_access(config)}", highlight=False)
    table = Table(box=None, pad_edge=False)
    for column in ("model", "versions", "instances", "threads each", "batching"):
        table.add_column(column)
    for spec in sorted(state.models.values(), key=lambda s: s.name):
        model = spec.config
        batching = model.dynamic_batching
        table.add_row(
            spec.name,
            ",".join(str(v.version) for v in spec.versions) or "-",
            str(config.instances(model)),
            str(config.threads_per_instance(model)),
            "-" if batching is None else f"{batching.max_queue_delay_ms:g} ms",
        )
    console.print(table)
    console.print(f"  HTTP  {scheme}://{shown}:{config.http_port}/v2")
    console.print(f"  gRPC  {shown}:{config.grpc_port}  (inference.GRPCInferenceService)")
    if config.metrics_port is not None:
        console.print(f"  metrics  http://{shown}:{config.metrics_port}/metrics")
    ones, twos = ",".join(["1"] * 16), ",".join(["2"] * 16)
    body = (
        '{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[' + ones + "]},"
        '{"name":"INPUT1","shape":[1,16],"datatype":"FP32","data":[' + twos + "]}]}"
    )
    if "add_sub" in state.models:
        console.print("Try:")
        console.print(
            f"  curl -s -X POST {scheme}://{shown}:{config.http_port}/v2/models/add_sub/infer "
            f"-d '{body}'",
            soft_wrap=True,
            highlight=False,
        )
    console.print("Press Ctrl-C to stop.")


def _access(config: ServerConfig) -> str:
    """Who may call: the banner's one line about credentials and TLS."""
    tls = "TLS" if config.tls_cert_file is not None else "no TLS"
    if config.tls_client_ca_file is not None:
        tls = "mutual TLS"
    if config.auth_file is None and not config.auth_tokens:
        return f"no credentials (inference open, admin calls from loopback only), {tls}"
    sources = [str(config.auth_file)] if config.auth_file is not None else []
    if config.auth_tokens:
        sources.append(f"{len(config.auth_tokens)} from {auth.TOKENS_ENV}")
    return f"bearer tokens ({', '.join(sources)}), {tls}"


@app.command()
def validate(
    repository: Path = typer.Argument(..., help="Model repository to check."),
    baseline: str | None = typer.Option(
        None,
        help="MODEL:VERSION: also run the offline accuracy gate on MODEL/evaluation.npz, the "
        "candidate against this version.",
    ),
    candidate: int | None = typer.Option(
        None, help="With --baseline: the candidate version (default: the highest other one)."
    ),
    margin: float = typer.Option(
        0.02, help="With --baseline: accuracy the candidate must gain (0.02 = 2 points)."
    ),
) -> None:
    """Load every model, run a sample inference, and exit non-zero on any problem (and, with
    --baseline, when the candidate does not beat the baseline by the margin)."""
    _configure_logging("error")
    from serving.models.loader import LoadError, load_version
    from serving.models.repository import scan, sha256_of
    from serving.models.runtimes.onnx import open_offline
    from serving.observe.drift import PROFILE_FILE

    try:
        sources = scan(repository)
    except FileNotFoundError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(2) from None
    table = Table(title=f"Model repository {repository}")
    for column in ("model", "version", "state", "sha256", "drift reference", "problem"):
        table.add_column(column)
    problems = 0
    for source in sources:
        if source.error:
            problems += 1
            table.add_row(source.name, "-", "[red]UNAVAILABLE[/]", "", "", source.error)
        for found in source.versions:
            shown = str(found.path.relative_to(repository))
            sha = sha256_of(found.path)[:12] if found.path.is_file() else ""
            try:
                loaded = load_version(found.path, source.config, open_offline, shown=shown)
            except LoadError as error:
                problems += 1
                state, reason = "[red]UNAVAILABLE[/]", error.reason
            else:
                loaded.runtime.close()
                state, reason = "[green]READY[/]", ""
            profiled = (found.path.parent / PROFILE_FILE).is_file()
            reference = PROFILE_FILE if profiled else "first requests (see serving profile)"
            table.add_row(source.name, str(found.version), state, sha, reference, reason)
    console.print(table)
    if problems:
        console.print(f"[red]{problems} problem(s) found[/]")
        raise typer.Exit(1)
    console.print("[green]all models loaded and answered a sample inference[/]")
    if baseline is not None:
        _offline_gate(repository, baseline, candidate, margin)


def _offline_gate(repository: Path, baseline: str, candidate: int | None, margin: float) -> None:
    """The rollout's offline accuracy gate, on the repository's files: exit 1 unless the
    candidate beats the baseline by ``margin``."""
    from serving.models.evaluation import accuracy, gate, run_offline
    from serving.models.loader import LoadError
    from serving.models.repository import scan_model

    model, _, version_text = baseline.partition(":")
    if not version_text.isascii() or not version_text.isdigit():
        raise typer.BadParameter(f"expected MODEL:VERSION, got '{baseline}'")
    stable = int(version_text)
    source = scan_model(repository / model)
    found = {v.version: v for v in source.versions}
    if candidate is None:
        others = sorted(v for v in found if v != stable)
        candidate = others[-1] if others else None
    missing = [v for v in (stable, candidate) if v is None or v not in found]
    if missing or candidate is None:
        shown = ", ".join(str(v) for v in sorted(found)) or "none"
        console.print(f"[red]{model} needs versions {stable} and a candidate (found: {shown})[/]")
        raise typer.Exit(2)
    scores = {}
    for version in (stable, candidate):
        try:
            evaluation, signature, outputs = run_offline(source, found[version])
            scores[version] = accuracy(outputs, evaluation, signature)
        except LoadError as error:
            console.print(f"[red]{error.reason}[/]")
            raise typer.Exit(2) from None
        except (FileNotFoundError, ValueError) as error:
            console.print(f"[red]{model} version {version}: {error}[/]")
            raise typer.Exit(2) from None
    passed = gate(scores[stable], scores[candidate], margin)
    verdict = "[green]passes[/]" if passed else "[red]fails[/]"
    console.print(
        f"offline gate on {model}/{evaluation.path.name} ({evaluation.rows} rows): candidate "
        f"version {candidate} {scores[candidate]:.2%}, baseline version {stable} "
        f"{scores[stable]:.2%}, margin {margin * 100:.1f} points: {verdict}",
        highlight=False,
    )
    if not passed:
        raise typer.Exit(1)


@app.command()
def profile(
    repository: Path = typer.Argument(..., help="Model repository."),
    model: str = typer.Argument(..., help="The model to profile."),
    version: list[int] = typer.Option(
        [], "--version", help="A version to profile (repeatable; default: those it serves)."
    ),
) -> None:
    """Write each version's drift reference (MODEL/VERSION/profile.json) from the model's
    evaluation set (MODEL/evaluation.npz)."""
    _configure_logging("error")
    from serving.models.loader import LoadError
    from serving.observe.profiling import profile_model

    try:
        done = profile_model(repository / model, list(version) or None)
    except (FileNotFoundError, ValueError, LoadError) as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    for profiled in done:
        console.print(
            f"{model} version {profiled.version}: {profiled.features} features from "
            f"{profiled.rows} rows -> {profiled.path}"
        )


@app.command()
def drift(
    model: str = typer.Argument(..., help="The model."),
    version: str | None = typer.Option(None, help="One version (default: every one served)."),
    url: str = typer.Option("localhost:8000", help="The server's HTTP address."),
) -> None:
    """Show drift detection for a model: its reference, what was sampled, the latest window."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/drift"
    document = call(url, path)
    for row in document["versions"]:
        console.print(render_drift(model, row))


def render_drift(model: str, row: dict[str, Any]) -> Table:
    latest = row["latest"]
    verdict = "no window scored yet"
    if latest is not None:
        verdict = "[red]DRIFTING[/]" if latest["detected"] else "[green]no drift[/]"
    reference = row["reference"] or (
        f"gathering from requests ({row['gathering_rows']}/{row['reference_rows_needed']} rows)"
    )
    table = Table(
        title=f"{model} version {row['version']}: {verdict}",
        caption=f"reference: {reference}; {row['sampled_rows']} rows sampled "
        f"({row['sample_fraction']:.0%} of requests) in {row['windows']} windows of "
        f"{row['window_rows']}",
    )
    for column in ("tensor", "p-value (adjusted)", "PSI", "most moved feature", "rows"):
        table.add_column(column)
    for name, score in (latest or {}).get("tensors", {}).items():
        alarm = score["p_value"] < latest["alpha"]
        shown = f"[red]{score['p_value']:.3g}[/]" if alarm else f"{score['p_value']:.3g}"
        table.add_row(
            name, shown, f"{score['psi']:.3f}", str(score["worst_feature"]), str(score["rows"])
        )
    return table


@app.command()
def top(
    url: str = typer.Option("localhost:8000", help="The server's HTTP address."),
    interval: float = typer.Option(2.0, min=0.2, help="Seconds between refreshes."),
    once: bool = typer.Option(False, help="Print one refresh and exit."),
) -> None:
    """A live view per model version: request rate, p50/p99, errors, queue, batch size,
    drift; read from the server (every replica, added up)."""
    from rich.live import Live

    from serving.observe.top import TopView

    view = TopView()
    view.update(call(url, "/v2/-/summary"), time.monotonic())
    if once:
        time.sleep(interval)
        view.update(call(url, "/v2/-/summary"), time.monotonic())
        console.print(view.table())
        return
    with Live(view.table(), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)
                view.update(call(url, "/v2/-/summary"), time.monotonic())
                live.update(view.table())
        except KeyboardInterrupt:
            pass


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
