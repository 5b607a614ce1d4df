"""Render the KubeRay manifests: a RayService running the server (with its serve Service on
the three ports), a PodMonitor for kube-prometheus-stack, a NetworkPolicy, and the model
repository's claim.

    python deploy/kuberay/render.py [--image IMAGE] [--gpu-image IMAGE] [--out deploy/kuberay]

writes ``cpu/serving.yaml`` and ``gpu/serving.yaml`` (``kubectl apply -f``). The RayService's
``serveConfigV2`` is what ``serving config`` prints for the same arguments, so the cluster runs
what ``serving serve`` runs; Ray's version is pinned to the one installed here (image and
cluster must match). Rendering the committed files again gives the same bytes (a test checks).
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from serving.config import AutoscalingConfig, ServerConfig
from serving.control.cluster import EMBEDDED_RAY_ENV
from serving.control.serveconfig import render as serve_config

NAME = "serving"
APP_LABEL = {"app.kubernetes.io/name": NAME}
MODELS_CLAIM = "serving-models"
MODELS_PATH = "/models"
PORTS = {"serve": 8000, "grpc": 8001, "metrics": 8002}
"""HTTP on the port KubeRay calls ``serve`` (it checks ``GET /-/healthz`` there)."""
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
DASHBOARD_AGENT_PORT = 52365
"""The KubeRay operator calls the head's dashboard (and its agent) to deploy and watch Serve."""
RAY_ENV = {
    **EMBEDDED_RAY_ENV,  # the lean control plane of the embedded Ray, on every node
    "RAY_worker_niceness": "0",  # replicas at normal priority (Ray starts workers at nice 15)
}
PROBE = {"periodSeconds": 5, "timeoutSeconds": 2}
RAYLET_HEALTH = "wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
"""Liveness is the Ray node's, as KubeRay's default: a worker whose replica is loading a big
model, or was scaled away, is alive (and not ready)."""
DEREGISTER_S = 7.0
"""A leaving replica keeps accepting this long while not ready: more than the readiness
probe's period, so that the Service has stopped sending it connections."""
PRE_STOP = (
    'python -c "import urllib.request as u; u.urlopen(u.Request('
    "'http://127.0.0.1:8000/-/drain', method='POST'), timeout=5)\" ; sleep 20"
)
"""Before a worker pod stops (upgrade, node drain, eviction): its replica drains first."""
WORKER_CPUS = 4
MAX_WORKERS = 8


def _env() -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in sorted(RAY_ENV.items())]


def _volume() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": MODELS_CLAIM,
                                                            "readOnly": True}}]  # fmt: skip
    mounts = [{"name": "models", "mountPath": MODELS_PATH, "readOnly": True}]
    return volumes, mounts


def _head(image: str) -> dict[str, Any]:
    volumes, mounts = _volume()
    return {
        # No replica on the head (0 CPUs to schedule on): it runs GCS and the controllers.
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": dict(APP_LABEL)},
            "spec": {
                "containers": [{
                    "name": "ray-head",
                    "image": image,
                    "env": _env(),
                    "ports": [{"name": n, "containerPort": p} for n, p in HEAD_PORTS.items()],
                    "resources": {
                        "requests": {"cpu": "1", "memory": "2Gi"},
                        "limits": {"cpu": "2", "memory": "4Gi"},
                    },
                    "volumeMounts": mounts,
                }],
                "volumes": volumes,
            },
        },
    }  # fmt: skip


def _workers(image: str, gpu: bool) -> dict[str, Any]:
    volumes, mounts = _volume()
    requests: dict[str, str] = {"cpu": str(WORKER_CPUS), "memory": "8Gi"}
    limits: dict[str, str] = {"cpu": str(WORKER_CPUS), "memory": "8Gi"}
    start: dict[str, str] = {}
    if gpu:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = "1"
        start["num-gpus"] = "1"
    container = {
        "name": "ray-worker",
        "image": image,
        "env": _env(),
        "ports": [{"name": n, "containerPort": p} for n, p in PORTS.items()],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        # Ready: the server's own v2 endpoint (KubeRay adds no probe where one is set).
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": PORTS["serve"]},
                           **PROBE, "failureThreshold": 1},
        "livenessProbe": {"exec": {"command": ["bash", "-c", RAYLET_HEALTH]},
                          **PROBE, "failureThreshold": 12},
        "lifecycle": {"preStop": {"exec": {"command": ["bash", "-c", PRE_STOP]}}},
    }  # fmt: skip
    return {
        "groupName": "gpu" if gpu else "cpu",
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": MAX_WORKERS,
        "rayStartParams": start,
        "template": {
            "metadata": {"labels": dict(APP_LABEL)},
            "spec": {
                "containers": [container],
                "volumes": volumes,
                "terminationGracePeriodSeconds": 60,  # a replica drains before it goes
            },
        },
    }


def rayservice(image: str, gpu: bool) -> dict[str, Any]:
    config = ServerConfig(
        repository=Path(MODELS_PATH),
        http_port=PORTS["serve"],
        grpc_port=PORTS["grpc"],
        metrics_port=PORTS["metrics"],
        # A replica per worker's CPUs; Serve adds replicas with the load, and KubeRay's
        # autoscaler adds worker pods for replicas that do not fit.
        replica_cpus=WORKER_CPUS,
        autoscaling=AutoscalingConfig(min_replicas=2, max_replicas=MAX_WORKERS),
        deregister_s=DEREGISTER_S,
    )
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": NAME, "labels": dict(APP_LABEL)},
        "spec": {
            "serveConfigV2": serve_config(config, name=NAME),
            # KubeRay's serve Service, with the three ports: it points the Service at the
            # cluster that serves, and switches it on an upgrade only once the new one does.
            "serveService": serve_service(),
            "excludeHeadPodFromServeSvc": True,
            "rayClusterConfig": {
                "rayVersion": version("ray"),
                "enableInTreeAutoscaling": True,
                "headGroupSpec": _head(image),
                "workerGroupSpecs": [_workers(image, gpu)],
            },
        },
    }


def serve_service() -> dict[str, Any]:
    """The Service KubeRay creates for the pods it admitted to serve (``GET /-/healthz`` on
    the ``serve`` port answered "success"); it sets the selector."""
    return {
        "metadata": {"name": NAME, "labels": dict(APP_LABEL)},
        "spec": {"ports": [{"name": n, "port": p, "targetPort": p} for n, p in PORTS.items()]},
    }


def pod_monitor() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": NAME, "labels": {**APP_LABEL, "release": "kube-prometheus-stack"}},
        "spec": {
            "selector": {"matchLabels": dict(APP_LABEL)},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def network_policy() -> dict[str, Any]:
    """From anywhere: only the serving ports. Between the cluster's own pods: everything Ray
    needs. From the KubeRay operator: the head's dashboard and its agent."""
    operator = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NAME, "labels": dict(APP_LABEL)},
        "spec": {
            "podSelector": {"matchLabels": dict(APP_LABEL)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": p} for p in PORTS.values()]},
                {"from": [{"podSelector": {"matchLabels": dict(APP_LABEL)}}]},
                {
                    "from": [operator],
                    "ports": [
                        {"protocol": "TCP", "port": HEAD_PORTS["dashboard"]},
                        {"protocol": "TCP", "port": DASHBOARD_AGENT_PORT},
                    ],
                },
            ],
        },
    }


def models_claim() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": MODELS_CLAIM, "labels": dict(APP_LABEL)},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "resources": {"requests": {"storage": "10Gi"}},
        },
    }


def manifests(image: str, gpu: bool) -> list[dict[str, Any]]:
    return [models_claim(), rayservice(image, gpu), pod_monitor(), network_policy()]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the serve config) as literal blocks, readable in the manifest."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _string)


def render(image: str, gpu: bool) -> str:
    header = (
        "# Rendered by deploy/kuberay/render.py; edit that, not this. "
        f"Image {image}, Ray {version('ray')}.\n"
    )
    return header + yaml.dump_all(manifests(image, gpu), Dumper=_Dumper, sort_keys=False)


def default_image(gpu: bool) -> str:
    return f"serving:{version('serving')}-{'gpu' if gpu else 'cpu'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=default_image(False), help="The CPU image.")
    parser.add_argument("--gpu-image", default=default_image(True), help="The GPU image.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    for variant, image, gpu in (("cpu", args.image, False), ("gpu", args.gpu_image, True)):
        path = args.out / variant / "serving.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(image, gpu))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
