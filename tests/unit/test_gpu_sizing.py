"""GPUs per replica and replicas per GPU: what a config leaves out follows from the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import ServerConfig
from serving.control.cluster import Sizing, gpu_share


def config(**fields: object) -> ServerConfig:
    return ServerConfig.model_validate({"repository": Path("repo"), **fields})


@pytest.mark.parametrize(
    ("fields", "cluster_gpus", "expected"),
    [
        ({}, 0.0, (0.0, None)),  # no GPUs: CPU sizing alone
        ({}, 4.0, (1.0, 4)),  # one replica per GPU
        ({"replica_gpus": 0.5}, 2.0, (0.5, 4)),  # two replicas share each GPU
        ({"replica_gpus": 1, "replicas": 3}, 8.0, (1.0, None)),  # the count as given
        ({"replica_gpus": 0}, 4.0, (0.0, None)),  # GPUs there, none asked for
    ],
)
def test_gpu_share(fields: dict[str, object], cluster_gpus: float, expected: tuple) -> None:
    assert gpu_share(config(**fields), cluster_gpus) == expected


def test_the_sizing_says_how_many_gpus_each_replica_holds() -> None:
    sizing = Sizing(replicas=2, replica_cpus=4.0, node_cpus=(8.0,), sized=True, replica_gpus=1)
    assert sizing.describe() == (
        "2 replica(s) of 4 CPUs and 1 GPU(s) (sized to the cluster; CPUs of the Ray node(s): 8)"
    )
