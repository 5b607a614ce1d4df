"""A real multi-node Ray cluster on this machine: a head and two worker nodes, one replica on
each worker. Both answer, a model loaded through one is served by both, statistics add up
across nodes, and with one node removed the server keeps answering."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from ray.cluster_utils import Cluster

from serving.control import cluster
from tests.integration.clients import V2Client
from tests.integration.conftest import start_server

WORKER = "serving_test_worker"
"""A custom resource each worker node has one of, and each replica needs: one replica a node."""

BODY = {
    "inputs": [
        {"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}
        for n in ("INPUT0", "INPUT1")
    ]
}
DIGITS = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def ask(url: str, model: str, body: dict[str, object], retries: int = 0) -> httpx.Response:
    """One request on a new connection (so SO_REUSEPORT may pick either replica)."""
    for attempt in range(retries + 1):
        try:
            with httpx.Client(base_url=f"http://{url}", timeout=30) as client:
                return client.post(f"/v2/models/{model}/infer", json=body)
        except httpx.TransportError:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


def nodes_answering(url: str, model: str, body: dict[str, object], count: int) -> Counter[str]:
    """The node (from ``Served-By: replica@node``) of each of ``count`` answers."""
    nodes: Counter[str] = Counter()
    for _ in range(count):
        response = ask(url, model, body)
        assert response.status_code == 200, response.text
        nodes[response.headers["Served-By"].split("@")[1]] += 1
    return nodes


@pytest.mark.slow
def test_two_nodes_serve_share_state_add_up_and_survive_losing_one(
    ray_cluster: Cluster, ray_serve: None, demo_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    for name in ("add_sub", "digits"):
        shutil.copytree(demo_repository / name, repo / name)
    workers = [ray_cluster.add_node(num_cpus=2, resources={WORKER: 1}) for _ in range(2)]
    ray_cluster.wait_for_nodes()
    worker_ids = {w.node_id[:12] for w in workers}
    server, held = start_server(
        "multinode", repo, replicas=2, replica_resources={WORKER: 1}, load_models=("add_sub",)
    )
    try:
        url = server.http_url
        answered = nodes_answering(url, "add_sub", BODY, 40)
        print(f"add_sub answered by node: {dict(answered)}")
        assert set(answered) == worker_ids  # a replica on each worker node, both answering

        # A model loaded through one replica is served by both.
        client = V2Client("http", server.http_url, server.grpc_url)
        assert ask(url, "digits", DIGITS).status_code == 404
        client.load_model("digits")
        loaded = nodes_answering(url, "digits", DIGITS, 40)
        print(f"digits, loaded through one replica, answered by node: {dict(loaded)}")
        assert set(loaded) == worker_ids

        # Statistics add up across the nodes, whichever replica is asked.
        for protocol in ("http", "grpc"):
            (stats,) = V2Client(protocol, server.http_url, server.grpc_url).statistics("add_sub")
            assert stats["inference_stats"]["success"]["count"] == 40

        # One worker node goes away: requests keep being answered (after one retry at most,
        # for a connection the dying replica had accepted).
        ray_cluster.remove_node(workers[0])
        failed = 0
        survivors: Counter[str] = Counter()
        deadline = time.monotonic() + 30
        for _ in range(40):
            response = ask(url, "add_sub", BODY, retries=1)
            if response.status_code != 200:
                failed += 1
            else:
                survivors[response.headers["Served-By"].split("@")[1]] += 1
        assert time.monotonic() < deadline
        print(f"after removing a node: {dict(survivors)}, failed after one retry: {failed}")
        assert failed == 0
        assert set(survivors) == {workers[1].node_id[:12]}
        (stats,) = client.statistics("add_sub")
        assert stats["inference_stats"]["success"]["count"] == 80  # the lost node's count stays
    finally:
        cluster.delete(server.app)
        for sock in held:
            sock.close()
        for worker in workers[1:]:
            ray_cluster.remove_node(worker)
