"""deploy/monitoring: the dashboard is what its builder makes, every expression in it and in the
alerting rules is valid PromQL over metrics the server defines, and each alert passes its
promtool unit test."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from serving.observe.metrics import METRICS

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: prometheus)"
)
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard", MONITORING / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_expressions() -> list[str]:
    document = json.loads((MONITORING / "dashboard.json").read_text())
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "expr" in node:
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return found


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_committed_dashboard_is_what_the_builder_makes() -> None:
    assert (MONITORING / "dashboard.json").read_text() == builder().render()


def test_the_dashboard_uses_a_current_schema() -> None:
    document = json.loads((MONITORING / "dashboard.json").read_text())
    assert document["schemaVersion"] >= 41  # Grafana 11.6's; an unpinned SDK writes 10.1's
    assert document["uid"] == "serving-runtime"


def test_every_metric_named_is_one_the_server_defines() -> None:
    known = set(METRICS)
    for expression in dashboard_expressions() + alert_expressions():
        for name in re.findall(r"\b(serving_[a-z_]+)", expression):
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
            assert base in known or name in known, f"{name} in {expression!r}"


@needs_promtool
def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    expressions = [e.replace("$__rate_interval", "5m") for e in dashboard_expressions()]
    assert len(expressions) >= 12
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expression_{i}", "expr": e}
                    for i, e in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(expressions)} rules found" in checked.stdout


@needs_promtool
def test_the_alerting_rules_parse_and_pass_their_unit_tests() -> None:
    checked = subprocess.run(
        [str(PROMTOOL), "check", "rules", "alerts.yml"],
        capture_output=True, text=True, timeout=60, cwd=MONITORING,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts.test.yml"],
        capture_output=True, text=True, timeout=60, cwd=MONITORING,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    tested_alerts = {c["alertname"] for t in tests for c in t["alert_rule_test"]}
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"][0]["rules"]
    assert tested_alerts == {rule["alert"] for rule in rules}  # every alert has a test
