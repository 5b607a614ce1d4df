"""The Grafana dashboard for the serving runtime's metrics, built with grafana-foundation-sdk
(pinned in pyproject.toml: its unpinned install picks an old schema).

    python deploy/monitoring/dashboard.py > deploy/monitoring/dashboard.json

The test suite rebuilds it and compares with the committed JSON, and checks every expression
with promtool.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import (
    DatasourceVariable,
    Dashboard,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
)

UID = "serving-runtime"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SLO_S = 0.1
"""The latency target the dashboard draws: 100 ms."""


def _query(expr: str, legend: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def _series(title: str, unit: str, *queries: tuple[str, str], slo: float | None = None) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    for expr, legend in queries:
        panel = panel.with_target(_query(expr, legend))
    if slo is not None:
        steps = [Threshold(value=None, color="green"), Threshold(value=slo, color="red")]
        panel = panel.thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    return panel


def _quantile(q: float, metric: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (model, version, le) "
        f"(rate({metric}_bucket[$__rate_interval])))"
    )


BY_VERSION = "{{model}} v{{version}}"


def build() -> Dashboard:
    return (
        Dashboard("Serving runtime")
        .uid(UID)
        .tags(["serving", "kserve-v2"])
        .refresh("10s")
        .time("now-1h", "now")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_row(Row("Traffic and latency"))
        .with_panel(
            _series(
                "Requests per second",
                "reqps",
                (
                    "sum by (model, version, protocol) (rate(serving_requests_total[$__rate_interval]))",
                    "{{model}} v{{version}} {{protocol}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Latency p50 / p99 (target 100 ms)",
                "s",
                (_quantile(0.5, "serving_request_duration_seconds"), "p50 " + BY_VERSION),
                (_quantile(0.99, "serving_request_duration_seconds"), "p99 " + BY_VERSION),
                slo=SLO_S,
            )
        )
        .with_panel(
            _series(
                "Error ratio (5xx)",
                "percentunit",
                (
                    'sum by (model, version) (rate(serving_requests_total{code=~"5.."}[$__rate_interval]))'
                    " / sum by (model, version) (rate(serving_requests_total[$__rate_interval]))",
                    BY_VERSION,
                ),
            )
        )
        .with_panel(
            _series(
                "Rejections by reason",
                "reqps",
                (
                    "sum by (model, version, reason) (rate(serving_rejections_total[$__rate_interval]))",
                    "{{model}} v{{version}} {{reason}}",
                ),
            )
        )
        .with_row(Row("Queueing and batching"))
        .with_panel(
            _series(
                "Queue and compute p99",
                "s",
                (_quantile(0.99, "serving_queue_duration_seconds"), "queue " + BY_VERSION),
                (_quantile(0.99, "serving_compute_duration_seconds"), "compute " + BY_VERSION),
            )
        )
        .with_panel(
            _series(
                "In flight and queued",
                "short",
                ("sum by (model, version) (serving_requests_in_flight)", "in flight " + BY_VERSION),
                ("sum by (model, version) (serving_queue_depth)", "queued " + BY_VERSION),
            )
        )
        .with_panel(
            _series(
                "Mean batch size (rows per execution)",
                "short",
                (
                    "sum by (model, version) (rate(serving_batch_size_sum[$__rate_interval]))"
                    " / sum by (model, version) (rate(serving_batch_size_count[$__rate_interval]))",
                    BY_VERSION,
                ),
            )
        )
        .with_panel(
            _series(
                "Rows inferred vs executions per second",
                "short",
                (
                    "sum by (model, version) (rate(serving_inferences_total[$__rate_interval]))",
                    "rows " + BY_VERSION,
                ),
                (
                    "sum by (model, version) (rate(serving_executions_total[$__rate_interval]))",
                    "executions " + BY_VERSION,
                ),
            )
        )
        .with_row(Row("Models and drift"))
        .with_panel(
            Stat()
            .title("Ready replicas")
            .datasource(DATASOURCE)
            .height(8)
            .span(6)
            .with_target(_query("sum(serving_replicas_ready)", "ready"))
        )
        .with_panel(
            Stat()
            .title("Versions drifting")
            .datasource(DATASOURCE)
            .height(8)
            .span(6)
            .with_target(_query("count(max by (model, version) (serving_drift_detected) == 1) or vector(0)", "drifting"))
        )
        .with_panel(
            _series(
                "Drift p-value (Bonferroni-adjusted; low = drifting)",
                "short",
                ("min by (model, version, tensor) (serving_drift_p_value)", "{{model}} v{{version}} {{tensor}}"),
            )
        )
        .with_panel(
            _series(
                "Model load time p99",
                "s",
                (
                    "histogram_quantile(0.99, sum by (model, le) "
                    "(rate(serving_model_load_duration_seconds_bucket[$__rate_interval])))",
                    "{{model}}",
                ),
            )
        )
    )


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


if __name__ == "__main__":
    print(render(), end="")
