"""Models for the export tests: every op the darknet translator emits, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, a: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(a, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, name: str, bias: bool = False) -> str:
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        ins = [x, self.const(f"{name}.w", w.astype(np.float32))]
        if bias:
            ins.append(self.const(f"{name}.b", (self.rng.standard_normal(cout) * 0.1)
                                  .astype(np.float32)))
        return self.node("Conv", ins, name, kernel_shape=[k, k], pads=[k // 2] * 4)

    def bn(self, x: str, c: int, name: str) -> str:
        # Trained-looking statistics that keep activations near 1 (no dead channels: those are
        # the fold tests' business, and a 1e-6 variance here would blow outputs up to 1e6).
        r = self.rng
        s = {"scale": r.uniform(0.7, 1.3, c), "B": r.standard_normal(c) * 0.1,
             "mean": r.standard_normal(c) * 0.2, "var": np.exp(r.standard_normal(c) * 0.5)}
        ins = [self.const(f"{name}.{k}", s[k].astype(np.float32))
               for k in ("scale", "B", "mean", "var")]
        return self.node("BatchNormalization", [x, *ins], name, epsilon=1e-5)

    def model(self, name: str, inputs, outputs, opset: int = 13) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
        onnx.checker.check_model(m, full_check=True)
        return m


def all_ops_model(seed: int = 0) -> onnx.ModelProto:
    """Every op the darknet translator emits, two outputs (4-D and 5-D), input 1x3x32x32.

    Conv+BN+LeakyRelu, MaxPool 2/2, Conv(bias)+Relu, x*Sigmoid(x) (Mul), shortcut Add, darknet's
    asymmetric size-2 stride-1 MaxPool, SpaceToDepth (reorg), Resize (upsample), Concat (route),
    a BN after the Concat that cannot fold (its Conv pads), and a YOLO-style Reshape/Transpose
    head with a Constant shape and an Identity.
    """
    b = _Builder(seed)
    x = b.node("LeakyRelu", [b.bn(b.conv("images", 3, 8, 3, "c1"), 8, "bn1")], "l1", alpha=0.1)
    p1 = b.node("MaxPool", [x], "p1", kernel_shape=[2, 2], strides=[2, 2])  # 8x16x16
    c2 = b.conv(p1, 8, 8, 3, "c2", bias=True)
    m2 = b.node("Mul", [b.node("Relu", [c2], "r2"), b.node("Sigmoid", [c2], "s2")], "m2")
    a2 = b.node("Add", [m2, p1], "a2")
    p2 = b.node("MaxPool", [a2], "p2", kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
    s2d = b.node("SpaceToDepth", [p2], "reorg", blocksize=2)  # 32x8x8
    l3 = b.node("LeakyRelu", [b.bn(b.conv(s2d, 32, 16, 1, "c3"), 16, "bn3")], "l3", alpha=0.1)
    up = b.node("Resize", [l3, "", b.const("up.scales", np.array([1, 1, 2, 2], np.float32))],
                "up", mode="nearest", coordinate_transformation_mode="asymmetric",
                nearest_mode="floor")  # 16x16x16
    cat = b.node("Concat", [up, a2], "route", axis=1)  # 24x16x16
    b.conv(b.bn(cat, 24, "bn_route"), 24, 10, 3, "grid", bias=True)
    shape = b.node("Constant", [], "head.shape",
                   value=numpy_helper.from_array(np.array([1, 2, 8, 8, 8], np.int64)))
    r = b.node("Reshape", [l3, shape], "head.reshape")
    t = b.node("Transpose", [r], "head.transpose", perm=[0, 1, 3, 4, 2])
    b.node("Identity", [t], "boxes")
    return b.model("all_ops", [("images", [1, 3, 32, 32])],
                   [("grid", [1, 10, 16, 16]), ("boxes", [1, 2, 8, 8, 8])])


def upsample_model(seed: int = 0) -> onnx.ModelProto:
    """Opset 9: Conv+BN+LeakyRelu, Upsample x2 (nearest), Conv; input 1x3x16x16."""
    b = _Builder(seed)
    x = b.node("LeakyRelu", [b.bn(b.conv("images", 3, 8, 3, "c1"), 8, "bn1")], "l1", alpha=0.1)
    up = b.node("Upsample", [x, b.const("up.scales", np.array([1, 1, 2, 2], np.float32))], "up",
                mode="nearest")
    b.conv(up, 8, 6, 1, "out", bias=True)
    return b.model("upsample", [("images", [1, 3, 16, 16])], [("out", [1, 6, 32, 32])], opset=9)


def unverified_model() -> onnx.ModelProto:
    """Conv then Hardmax: an op outside the verified set, for the refusal."""
    b = _Builder(0)
    b.node("Hardmax", [b.conv("images", 3, 4, 3, "c1")], "prob", axis=1)
    return b.model("softmax", [("images", [1, 3, 8, 8])], [("prob", [1, 4, 8, 8])])
