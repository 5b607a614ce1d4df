"""Benchmark models, generated in code with seeded weights (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serving import demo


class _Graph:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, relu: bool = True) -> str:
        """Convolution with batch norm folded into its bias, then ReLU."""
        w, b, y = self.name("W"), self.name("B"), self.name("conv")
        fan_in = cin * k * k
        weight = self.rng.normal(0, np.sqrt(2.0 / fan_in), size=(cout, cin, k, k))
        self.inits += [
            numpy_helper.from_array(weight.astype(np.float32), w),
            numpy_helper.from_array(np.zeros(cout, np.float32), b),
        ]
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, w, b],
                [y],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        if not relu:
            return y
        out = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [y], [out]))
        return out

    def basic_block(self, x: str, cin: int, cout: int, stride: int) -> str:
        h = self.conv(x, cin, cout, 3, stride)
        h = self.conv(h, cout, cout, 3, 1, relu=False)
        shortcut = (
            x if stride == 1 and cin == cout else self.conv(x, cin, cout, 1, stride, relu=False)
        )
        added, out = self.name("add"), self.name("relu")
        self.nodes += [
            helper.make_node("Add", [h, shortcut], [added]),
            helper.make_node("Relu", [added], [out]),
        ]
        return out


def resnet18(seed: int = 0, classes: int = 1000) -> onnx.ModelProto:
    """ResNet-18's shape (3x224x224 in, 1000 logits out) with random, seeded weights."""
    g = _Graph(seed)
    h = g.conv("input", 3, 64, 7, 2)
    pooled = g.name("pool")
    g.nodes.append(
        helper.make_node(
            "MaxPool", [h], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    h, channels = pooled, 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        h = g.basic_block(h, channels, width, stride)
        h = g.basic_block(h, width, width, 1)
        channels = width
    g.nodes += [
        helper.make_node("GlobalAveragePool", [h], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    g.inits += [
        numpy_helper.from_array(
            g.rng.normal(0, 0.01, size=(classes, 512)).astype(np.float32), "fc_w"
        ),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
    ]
    graph = helper.make_graph(
        g.nodes,
        "resnet18_shaped",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", demo.OPSET)])
    model.ir_version = demo.IR_VERSION
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def bert_encoder(
    seed: int = 0, vocab: int = 1000, hidden: int = 128, layers: int = 2, heads: int = 2,
    ffn: int = 512, sequence: int = 128,
) -> onnx.ModelProto:  # fmt: skip
    """A small BERT-style encoder: INT64 token ids [batch, sequence] → pooled [batch, hidden]."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    head_dim = hidden // heads

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(name: str, shape: tuple[int, ...]) -> str:
        return const(name, (rng.normal(0, 0.02, size=shape)).astype(np.float32))

    def dense(x: str, w: str, b: str, out: str) -> str:
        nodes.append(helper.make_node("MatMul", [x, w], [f"{out}_mm"]))
        nodes.append(helper.make_node("Add", [f"{out}_mm", b], [out]))
        return out

    def norm(x: str, out: str) -> str:
        scale = const(f"{out}_g", np.ones(hidden, np.float32))
        bias = const(f"{out}_b", np.zeros(hidden, np.float32))
        nodes.append(helper.make_node("LayerNormalization", [x, scale, bias], [out], axis=-1))
        return out

    const("split_heads", np.array([0, 0, heads, head_dim], np.int64))
    const("merge_heads", np.array([0, 0, hidden], np.int64))
    const("attn_scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    weight("token_embedding", (vocab, hidden))
    weight("position_embedding", (sequence, hidden))
    nodes += [
        helper.make_node("Gather", ["token_embedding", "input_ids"], ["tokens"]),
        helper.make_node("Add", ["tokens", "position_embedding"], ["embedded"]),
    ]
    x = norm("embedded", "emb_norm")
    for layer in range(layers):
        p = f"l{layer}_"
        zeros = np.zeros(hidden, np.float32)
        qkv = {}
        for part in ("q", "k", "v"):
            projected = dense(x, weight(p + part + "_w", (hidden, hidden)),
                              const(p + part + "_b", zeros), p + part)  # fmt: skip
            nodes.append(helper.make_node("Reshape", [projected, "split_heads"], [p + part + "_h"]))
            perm = [0, 2, 3, 1] if part == "k" else [0, 2, 1, 3]
            nodes.append(
                helper.make_node("Transpose", [p + part + "_h"], [p + part + "_t"], perm=perm)
            )
            qkv[part] = p + part + "_t"
        nodes += [
            helper.make_node("MatMul", [qkv["q"], qkv["k"]], [p + "scores_raw"]),
            helper.make_node("Mul", [p + "scores_raw", "attn_scale"], [p + "scores"]),
            helper.make_node("Softmax", [p + "scores"], [p + "probs"], axis=-1),
            helper.make_node("MatMul", [p + "probs", qkv["v"]], [p + "ctx_h"]),
            helper.make_node("Transpose", [p + "ctx_h"], [p + "ctx_t"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [p + "ctx_t", "merge_heads"], [p + "ctx"]),
        ]
        attended = dense(
            p + "ctx", weight(p + "o_w", (hidden, hidden)), const(p + "o_b", zeros), p + "o"
        )
        nodes.append(helper.make_node("Add", [x, attended], [p + "res1"]))
        x = norm(p + "res1", p + "norm1")
        up = dense(
            x,
            weight(p + "f1_w", (hidden, ffn)),
            const(p + "f1_b", np.zeros(ffn, np.float32)),
            p + "f1",
        )
        nodes.append(helper.make_node("Relu", [up], [p + "f1_act"]))
        down = dense(
            p + "f1_act", weight(p + "f2_w", (ffn, hidden)), const(p + "f2_b", zeros), p + "f2"
        )
        nodes.append(helper.make_node("Add", [x, down], [p + "res2"]))
        x = norm(p + "res2", p + "norm2")
    nodes.append(helper.make_node("ReduceMean", [x], ["pooled"], axes=[1], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "bert_style_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", sequence])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", demo.OPSET)])
    model.ir_version = demo.IR_VERSION
    onnx.checker.check_model(model)
    return model
