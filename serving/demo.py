"""The built-in demo repository, generated in code: nothing is downloaded.

``digits``: scikit-learn's bundled 8x8 digits; version 1 a linear model, version 2 a small MLP,
exported to ONNX by hand (input: raw pixels 0-16, outputs: probabilities and label). A held-out
evaluation set is stored beside them as ``digits/evaluation.npz``, and each version's drift
reference profile, computed from it, as ``digits/VERSION/profile.json``.
``add_sub``: two FP32 inputs, their sum and difference.
``identity_<type>``: one per v2 datatype, returning its input unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
DEMO_VERSION = "3"
"""Bump when the generated models change, so cached copies are rebuilt."""

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def classifier_onnx(layers: list[tuple[np.ndarray, np.ndarray]], name: str) -> onnx.ModelProto:
    """Pixels (0-16) → scale → [Gemm → Relu]* → Gemm → Softmax, plus ArgMax as the label."""
    nodes = [helper.make_node("Mul", ["input", "scale"], ["h0"])]
    inits = [numpy_helper.from_array(np.array(1.0 / 16.0, dtype=np.float32), "scale")]
    current = "h0"
    for index, (weight, bias) in enumerate(layers):
        w, b = f"W{index}", f"b{index}"
        inits += [
            numpy_helper.from_array(weight.astype(np.float32), w),
            numpy_helper.from_array(bias.astype(np.float32), b),
        ]
        out = f"z{index}"
        nodes.append(helper.make_node("Gemm", [current, w, b], [out]))
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"a{index}"]))
            current = f"a{index}"
        else:
            current = out
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
    nodes.append(helper.make_node("ArgMax", [current], ["label"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=inits,
    )
    return _model(graph)


def identity_onnx(datatype: str) -> onnx.ModelProto:
    elem = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT"], ["OUTPUT"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("INPUT", elem, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT", elem, ["batch", "n"])],
    )
    return _model(graph)


def _fp32_rows(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 16])


def add_sub_onnx() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [_fp32_rows(n) for n in ("INPUT0", "INPUT1")],
        [_fp32_rows(n) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return _model(graph)


def train_digits(
    seed: int = 0,
) -> tuple[
    list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray
]:
    """Linear and MLP weights (as Gemm operands) trained on digits, and the held-out split."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # Strongly regularised, so that the MLP (v2) beats it by the offline gate's margin.
        linear = LogisticRegression(C=0.05, max_iter=300).fit(x_train / 16.0, y_train)
        mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=seed).fit(
            x_train / 16.0, y_train
        )
    linear_layers = [(linear.coef_.T, linear.intercept_)]
    mlp_layers = list(zip(mlp.coefs_, mlp.intercepts_, strict=True))
    return linear_layers, mlp_layers, x_test, y_test


def build(repository: Path) -> Path:
    """Write the demo repository to ``repository`` (which must not exist yet)."""
    repository.mkdir(parents=True)
    linear, mlp, x_test, y_test = train_digits()
    digits = repository / "digits"
    _save(classifier_onnx(linear, "digits_linear"), digits / "1" / "model.onnx")
    _save(classifier_onnx(mlp, "digits_mlp"), digits / "2" / "model.onnx")
    np.savez(digits / "evaluation.npz", inputs=x_test, labels=y_test)
    _write_config(digits, {
        "max_batch_size": 64,
        "version_policy": "all",
        "inputs": [{"name": "input", "datatype": "FP32", "dims": [64]}],
        "labels": {"task": "8x8 digit classification", "dataset": "sklearn.datasets.load_digits"},
    })  # fmt: skip
    from serving.observe.profiling import profile_model

    profile_model(digits)  # drift references from the evaluation set: digits/*/profile.json
    _save(add_sub_onnx(), repository / "add_sub" / "1" / "model.onnx")
    _write_config(repository / "add_sub", {"max_batch_size": 8})
    for datatype in ONNX_TYPES:
        directory = repository / f"identity_{datatype.lower()}"
        _save(identity_onnx(datatype), directory / "1" / "model.onnx")
        _write_config(directory, {"max_batch_size": 8})
    return repository


def _write_config(directory: Path, document: dict[str, object]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "serving" / f"demo-v{DEMO_VERSION}"


def ensure(repository: Path | None = None) -> Path:
    """The demo repository, generated on first use (atomically, so runs may race)."""
    target = repository or cache_dir()
    if (target / "digits" / "evaluation.npz").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        build(staging / "repo")
        try:
            (staging / "repo").rename(target)
        except OSError:
            if not (target / "digits" / "evaluation.npz").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
