"""Reconciling config with the graph, and validating requests against the signature."""

from __future__ import annotations

import numpy as np
import pytest

from serving.config import DynamicBatching, ModelConfig, TensorConfig
from serving.errors import InvalidInputError
from serving.models.runtimes.base import GraphTensor
from serving.models.signature import SignatureError, reconcile, validate
from serving.types import InferenceRequest, RequestedOutput, Tensor

GRAPH_IN = [GraphTensor("x", "FP32", (-1, 4)), GraphTensor("ids", "INT64", (-1, -1))]
GRAPH_OUT = [GraphTensor("y", "FP32", (-1, 2))]


def test_batchable_graph_gets_the_default_max_batch_size() -> None:
    signature = reconcile(ModelConfig(), GRAPH_IN, GRAPH_OUT)
    assert signature.max_batch_size == 64
    assert [t.dims for t in signature.inputs] == [(4,), (-1,)]
    assert signature.full_shape(signature.inputs[0]) == [-1, 4]


def test_fixed_first_dim_means_no_batching() -> None:
    signature = reconcile(ModelConfig(), [GraphTensor("x", "FP32", (3, 4))], GRAPH_OUT)
    assert signature.max_batch_size == 0
    assert signature.inputs[0].dims == (3, 4)


def test_explicit_batching_needs_a_dynamic_first_dim() -> None:
    with pytest.raises(SignatureError, match="x have none"):
        reconcile(ModelConfig(max_batch_size=4), [GraphTensor("x", "FP32", (3, 4))], GRAPH_OUT)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (TensorConfig(name="z", datatype="FP32", dims=(4,)), "'z' is not in the graph"),
        (TensorConfig(name="x", datatype="FP16", dims=(4,)), "is FP16, the graph has FP32"),
        (TensorConfig(name="x", datatype="FP32", dims=(5,)), "has dims \\[5\\]"),
    ],
)
def test_config_disagreeing_with_graph(declared: TensorConfig, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        reconcile(ModelConfig(inputs=(declared,)), GRAPH_IN, GRAPH_OUT)


def request(*tensors: Tensor, outputs: list[str] | None = None) -> InferenceRequest:
    wanted = [RequestedOutput(n) for n in outputs] if outputs is not None else None
    return InferenceRequest("m", None, list(tensors), wanted)


X = Tensor("x", "FP32", np.zeros((2, 4), np.float32))
IDS = Tensor("ids", "INT64", np.zeros((2, 7), np.int64))


def test_valid_request_returns_outputs_to_compute() -> None:
    signature = reconcile(ModelConfig(max_batch_size=8), GRAPH_IN, GRAPH_OUT)
    assert validate(request(X, IDS), signature, "m") == ["y"]
    assert validate(request(X, IDS, outputs=["y", "y"]), signature, "m") == ["y"]


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ((X,), "missing input\\(s\\) for model 'm': ids"),
        ((X, IDS, X), "'x' is given more than once"),
        ((X, Tensor("ids", "INT32", np.zeros((2, 7), np.int32))), "has datatype INT32"),
        ((Tensor("x", "FP32", np.zeros((2, 5), np.float32)), IDS), "has shape \\[2, 5\\]"),
        ((Tensor("x", "FP32", np.zeros((9, 4), np.float32)), IDS), "batch size 9, above"),
        ((Tensor("x", "FP32", np.zeros((0, 4), np.float32)), IDS), "batch size 0"),
        ((X, Tensor("ids", "INT64", np.zeros((3, 7), np.int64))), "disagree on the batch size"),
    ],
)
def test_invalid_requests(tensors: tuple[Tensor, ...], message: str) -> None:
    signature = reconcile(ModelConfig(max_batch_size=8), GRAPH_IN, GRAPH_OUT)
    with pytest.raises(InvalidInputError, match=message):
        validate(request(*tensors), signature, "m")


def test_unknown_output() -> None:
    signature = reconcile(ModelConfig(), GRAPH_IN, GRAPH_OUT)
    with pytest.raises(InvalidInputError, match="unknown output 'q'"):
        validate(request(X, IDS, outputs=["q"]), signature, "m")


def test_dynamic_batching_needs_a_batch_dimension() -> None:
    config = ModelConfig(max_batch_size=0, dynamic_batching=DynamicBatching())
    with pytest.raises(SignatureError, match="dynamic_batching needs a model with max_batch_size"):
        reconcile(config, GRAPH_IN, GRAPH_OUT)
