"""deploy/kuberay's manifests, validated offline: built-in kinds with kubernetes-validate
(strict: unknown fields refused), the RayService and the PodMonitor against their CRDs' schemas
with jsonschema (unknown fields refused too), the embedded Serve config by ``serving config
--check``'s rules; and the committed files are what ``render.py`` writes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from serving.control.serveconfig import check

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
SCHEMAS = {
    ("ray.io/v1", "RayService"): KUBERAY / "schema" / "rayservices.ray.io_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): KUBERAY
    / "schema"
    / "podmonitors.monitoring.coreos.com_v1.json",
}
KUBERNETES = "1.31.0"
VARIANTS = ("cpu", "gpu")


def documents(variant: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((KUBERAY / variant / "serving.yaml").read_text()))


def strict(schema: Any) -> Any:
    """``schema`` refusing fields it does not name, as the API server's pruning would silently
    drop them (objects that preserve unknown fields, or type their values, stay open)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def custom_validator(api_version: str, kind: str) -> jsonschema.Validator:
    schema = strict(json.loads(SCHEMAS[api_version, kind].read_text()))
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_validates(variant: str) -> None:
    kinds = []
    for document in documents(variant):
        key = (document["apiVersion"], document["kind"])
        kinds.append(document["kind"])
        if key in SCHEMAS:
            errors = [e.message for e in custom_validator(*key).iter_errors(document)]
            assert not errors, (key, errors)
        else:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
    assert sorted(kinds) == sorted(["PersistentVolumeClaim", "RayService", "PodMonitor",
                                    "NetworkPolicy"])  # fmt: skip


def test_the_validators_refuse_unknown_fields() -> None:
    (service,) = [d for d in documents("cpu") if d["kind"] == "RayService"]
    typo = copy.deepcopy(service)
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    errors = list(custom_validator("ray.io/v1", "RayService").iter_errors(typo))
    assert any("rayStartParam" in e.message for e in errors), [e.message for e in errors]
    pod = copy.deepcopy(service)
    worker = pod["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert not custom_validator("ray.io/v1", "RayService").is_valid(pod)
    (policy,) = [d for d in documents("cpu") if d["kind"] == "NetworkPolicy"]
    policy = copy.deepcopy(policy)
    policy["spec"]["ingres"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, KUBERNETES, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_serve_config_passes_serving_config_check(variant: str) -> None:
    (service,) = [d for d in documents(variant) if d["kind"] == "RayService"]
    assert check(yaml.safe_load(service["spec"]["serveConfigV2"])) == []


def test_the_committed_manifests_are_what_render_writes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(KUBERAY / "render.py"), "--out", str(tmp_path)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    for variant in VARIANTS:
        rendered = (tmp_path / variant / "serving.yaml").read_text()
        assert rendered == (KUBERAY / variant / "serving.yaml").read_text(), variant


def test_the_gpu_variant_asks_for_a_gpu_and_the_pods_expose_and_drain() -> None:
    (service,) = [d for d in documents("gpu") if d["kind"] == "RayService"]
    (workers,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert workers["rayStartParams"]["num-gpus"] == "1"
    (cpu,) = [d for d in documents("cpu") if d["kind"] == "RayService"]
    exposed = cpu["spec"]["serveService"]  # KubeRay's serve Service, with our ports
    assert {p["port"] for p in exposed["spec"]["ports"]} == {8000, 8001, 8002}
    (workers,) = cpu["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert {"name": "serve", "containerPort": 8000} in container["ports"]
    assert "/-/drain" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    args = yaml.safe_load(cpu["spec"]["serveConfigV2"])["applications"][0]["args"]
    probe = container["readinessProbe"]
    assert args["deregister_s"] > probe["periodSeconds"] * probe["failureThreshold"]
