"""Write the schema of a custom resource the tests validate the manifests against, from its
CustomResourceDefinition file:

    python deploy/kuberay/schema/extract.py CRD.yaml

Used for KubeRay's RayService (``ray-operator/config/crd/bases/ray.io_rayservices.yaml``) and
prometheus-operator's PodMonitor (``example/prometheus-operator-crd/
monitoring.coreos.com_podmonitors.yaml``), both Apache License 2.0. The output,
``PLURAL.GROUP_v1.json`` here, keeps the ``v1`` version's ``openAPIV3Schema`` without its
``description`` texts or ``status`` (what a manifest may hold, nothing more), so that the check
runs offline with ``jsonschema``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def main(crd_path: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strip(version["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    out = Path(__file__).with_name(f"{crd['metadata']['name']}_v1.json")
    out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
