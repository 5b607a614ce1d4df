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
