"""``serving traffic`` and ``serving rollout``: the admin endpoints from the command line, with
readable tables (the JSON is one ``--json`` away)."""

from __future__ import annotations

import os
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

console = Console()

traffic_app = typer.Typer(no_args_is_help=True, help="Show or set a model's traffic table.")
rollout_app = typer.Typer(
    no_args_is_help=True, help="Progressive rollouts: start, watch, promote, pause, resume, abort."
)

URL = typer.Option("localhost:8000", help="The server's HTTP address (https://host:port for TLS).")
AS_JSON = typer.Option(False, "--json", help="Print the endpoint's JSON document.")


CA_FILE_ENV = "SERVING_CA_FILE"
"""A PEM CA bundle that the CLI trusts for an ``https://`` server (instead of the system's)."""
CLIENT_CERT_ENV, CLIENT_KEY_ENV = "SERVING_CLIENT_CERT", "SERVING_CLIENT_KEY"
"""The certificate and key the CLI presents to a server that asks for one (mutual TLS)."""


def call(url: str, path: str, body: object = None, *, method: str = "GET") -> Any:
    """The server's JSON answer; exit 2 when it cannot be reached, 1 on an error answer (its
    message printed). ``url`` is ``host:port`` or ``https://host:port``; the credential is
    ``SERVING_TOKEN`` (or the file ``SERVING_TOKEN_FILE`` names)."""
    import ssl

    import httpx

    from serving.security.auth import client_token

    base = url if "://" in url else f"http://{url}"
    headers = {}
    token = client_token()
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    verify: ssl.SSLContext | bool = True
    certificate, key = os.environ.get(CLIENT_CERT_ENV), os.environ.get(CLIENT_KEY_ENV)
    if os.environ.get(CA_FILE_ENV) or certificate:
        verify = ssl.create_default_context(cafile=os.environ.get(CA_FILE_ENV) or None)
        if certificate:
            verify.load_cert_chain(certificate, key or None)
    try:
        response = httpx.request(
            method,
            f"{base}{path}",
            json=body if method == "POST" else None,
            headers=headers,
            timeout=60,
            verify=verify,
        )
    except httpx.HTTPError as error:
        console.print(f"[red]cannot reach the server at {url}: {error}[/]")
        raise typer.Exit(2) from None
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        console.print(f"[red]{response.status_code}: {message}[/]", highlight=False)
        raise typer.Exit(1)
    return response.json()


def _print(document: dict[str, Any], as_json: bool, render: Any) -> None:
    if as_json:
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        for part in render(document):
            console.print(part, highlight=False)


def _weights(weights: dict[str, float]) -> str:
    return "  ".join(f"v{v} {w:g}%" for v, w in weights.items()) or "-"


# -- traffic ---------------------------------------------------------------------------------


def render_traffic(document: dict[str, Any]) -> list[Any]:
    name = document["model"]
    lines: list[Any] = []
    if document["table"]:
        lines.append(f"{name}: traffic table  {_weights(document['weights'])}")
    else:
        default = document["default"]
        lines.append(f"{name}: no traffic table (unversioned requests go to v{default})")
    shadow = document.get("shadow")
    if shadow:
        lines.append(f"  shadow  v{shadow['version']} gets {shadow['fraction']:.0%} of requests")
    if document.get("rollout"):
        lines.append(f"  rollout {document['rollout']} (serving rollout status {name})")
    lines.append(f"  loaded  {', '.join('v' + v for v in document['versions'])}")
    if document["table"]:
        lines.append(f"  salt    {document['salt']}")
    compared = document.get("shadow_statistics") or []
    if compared:
        lines.append(_shadow_table(compared))
    return lines


def _shadow_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="shadow comparisons (every replica)", title_justify="left")
    columns = ("primary", "shadow", "mirrored", "compared", "agree", "within tol", "dropped",
               "failed", "+compute ms")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for row in rows:
        agreement = row.get("agreement")
        within = row.get("within_tolerance")
        table.add_row(
            f"v{row['primary']}",
            f"v{row['shadow']}",
            str(row["mirrored"]),
            str(row["pairs"]),
            "-" if agreement is None else f"{agreement:.2%}",
            "-" if within is None else f"{within:.2%}",
            str(row["dropped"]),
            str(row["errors"]),
            _number(row["compute_difference_ms"]),
        )
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _parse_weights(pairs: list[str]) -> dict[str, float]:
    weights = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        try:
            weights[version.strip()] = float(weight)
        except ValueError:
            raise typer.BadParameter(f"expected VERSION=WEIGHT, got '{pair}'") from None
        if not sep:
            raise typer.BadParameter(f"expected VERSION=WEIGHT, got '{pair}'")
    return weights


@traffic_app.command("show")
def traffic_show(model: str, url: str = URL, as_json: bool = AS_JSON) -> None:
    """A model's traffic table and its shadow comparisons."""
    _print(call(url, f"/v2/models/{model}/traffic"), as_json, render_traffic)


@traffic_app.command("set")
def traffic_set(
    model: str,
    weights: list[str] = typer.Argument(
        None, help="VERSION=WEIGHT pairs (e.g. 1=90 2=10); none clears the table."
    ),
    shadow: str | None = typer.Option(
        None, help="Mirror requests to this version (answers compared, never returned)."
    ),
    shadow_fraction: float = typer.Option(0.25, min=0.0, max=1.0, help="Share mirrored."),
    url: str = URL,
    as_json: bool = AS_JSON,
) -> None:
    """Split a model's unversioned traffic by weight (sticky by x-routing-key)."""
    body: dict[str, Any] = {"weights": _parse_weights(weights or [])}
    if shadow is not None:
        body["shadow"] = {"version": shadow, "fraction": shadow_fraction}
    document = call(url, f"/v2/models/{model}/traffic", body, method="POST")
    _print(document, as_json, render_traffic)


# -- rollouts --------------------------------------------------------------------------------


def render_rollout(document: dict[str, Any]) -> list[Any]:
    colour = {"running": "cyan", "paused": "yellow", "promoted": "green"}.get(
        document["status"], "red"
    )
    steps = "  ".join(
        f"[bold]{s}[/]" if index + 1 == document["step"] else s
        for index, s in enumerate(document["steps"])
    )
    lines: list[Any] = [
        f"{document['model']}: v{document['stable']} -> v{document['canary']}  "
        f"[{colour}]{document['status'].upper()}[/]  ({document['verdict']})",
        f"  step     {document['step']}/{len(document['steps'])} {document['current_step']} "
        f"for {document['step_seconds']:.1f} s   steps: {steps}",
        f"  weights  {_weights(document['weights'])}"
        + (f"   shadow v{document['shadow']['version']}" if document.get("shadow") else ""),
    ]
    evaluation = document.get("evaluation") or {}
    if evaluation.get("skipped"):
        lines.append(f"  offline gate skipped: {evaluation.get('reason')}")
    elif evaluation:
        lines.append(
            f"  offline gate passed on {evaluation['set']}: v{evaluation['canary']['version']} "
            f"{evaluation['canary']['accuracy']:.2%} vs v{evaluation['stable']['version']} "
            f"{evaluation['stable']['accuracy']:.2%}"
        )
    title = "since the rollout started (every replica)"
    if not document["counting"]:
        title = "waiting for the replicas to report to a restarted controller"
    table = Table(title=title, title_justify="left")
    for column in ("role", "version", "requests", "errors", "error rate", "p50 ms", "p99 ms"):
        table.add_column(column)
    for role, row in document["versions"].items():
        table.add_row(
            role,
            f"v{row['version']}",
            str(row["requests"]),
            str(row["errors"]),
            "-" if row["error_rate"] is None else f"{row['error_rate']:.2%}",
            _number(row["p50_ms"]),
            _number(row["p99_ms"]),
        )
    lines.append(table)
    compared = document.get("shadow_statistics")
    if compared and compared["mirrored"]:
        pair = {"primary": document["stable"], "shadow": document["canary"]}
        lines.append(_shadow_table([{**pair, **compared}]))
    decision = document.get("decision")
    if decision:
        lines.append(f"  last decision  {decision['action']}: {decision['reason']}")
    outcome = document.get("outcome")
    if outcome and document["status"] not in ("running", "paused"):
        lines.append(f"  outcome        {outcome['reason']}")
    return lines


@rollout_app.command("start")
def rollout_start(
    model: str,
    version: str = typer.Argument(..., help="The candidate version."),
    from_version: str | None = typer.Option(
        None, "--from", help="The stable version (default: the one taking most traffic)."
    ),
    steps: str = typer.Option(
        "5,25,50,100", help="Comma-separated: 'shadow' and/or live percentages, ending at 100."
    ),
    min_requests: int = typer.Option(100, help="Canary requests each step needs to pass."),
    min_step_s: float = typer.Option(30.0, help="Seconds each step lasts at least."),
    shadow_fraction: float = typer.Option(0.25, help="Share mirrored in a shadow step."),
    margin: float = typer.Option(0.02, help="Accuracy the candidate must gain offline."),
    skip_eval: bool = typer.Option(False, "--skip-eval", help="Skip the offline gate."),
    keep_previous: bool = typer.Option(
        False, "--keep-previous", help="Keep the old version loaded after promotion."
    ),
    url: str = URL,
    as_json: bool = AS_JSON,
) -> None:
    """Start rolling MODEL out to VERSION (after the offline accuracy gate)."""
    parsed: list[Any] = []
    for step in (s.strip() for s in steps.split(",") if s.strip()):
        if step == "shadow":
            parsed.append(step)
            continue
        try:
            parsed.append(int(step.rstrip("%")))
        except ValueError:
            raise typer.BadParameter(f"a step is 'shadow' or a percentage, got '{step}'") from None
    body = {
        "version": version,
        "from": from_version,
        "steps": parsed,
        "min_requests_per_step": min_requests,
        "min_step_s": min_step_s,
        "shadow_fraction": shadow_fraction,
        "margin": margin,
        "skip_eval": skip_eval,
        "keep_previous": keep_previous,
    }
    document = call(url, f"/v2/models/{model}/rollout", body, method="POST")
    _print(document, as_json, render_rollout)


@rollout_app.command("status")
def rollout_status(
    model: str,
    watch: bool = typer.Option(False, help="Refresh until the rollout ends."),
    interval: float = typer.Option(1.0, min=0.2, help="Seconds between refreshes (--watch)."),
    url: str = URL,
    as_json: bool = AS_JSON,
) -> None:
    """The rollout's step, weights, per-version statistics and last decision; exits 1 when it
    was rolled back or aborted."""
    import time

    from rich.console import Group
    from rich.live import Live

    document = call(url, f"/v2/models/{model}/rollout")
    if watch and not as_json:
        with Live(Group(*render_rollout(document)), console=console) as live:
            while document["status"] in ("running", "paused"):
                time.sleep(interval)
                document = call(url, f"/v2/models/{model}/rollout")
                live.update(Group(*render_rollout(document)))
    else:
        _print(document, as_json, render_rollout)
    if not document["healthy"]:
        raise typer.Exit(1)


def _action(name: str, summary: str) -> None:
    def command(model: str, url: str = URL, as_json: bool = AS_JSON) -> None:
        document = call(url, f"/v2/models/{model}/rollout/{name}", {}, method="POST")
        _print(document, as_json, render_rollout)

    command.__doc__ = summary
    rollout_app.command(name)(command)


_action("promote", "Promote the canary to 100% now.")
_action("pause", "Stop advancing (the gates can still roll back).")
_action("resume", "Advance again after a pause.")
_action("abort", "Send all traffic back to stable (the canary stays loaded).")
