"""Generate models/tiny-yolov2-backbone.onnx, the bundled default model, byte for byte.

A tiny-YOLOv2-shaped backbone at reduced width: 7 blocks of Conv (no bias) -> BatchNormalization
-> LeakyRelu(0.1), MaxPool 2/2 after the first five and darknet's size-2 stride-1 MaxPool (padded
bottom/right, keeps 13x13) after the sixth, then a 1x1 Conv with bias to 125 channels
(5 anchors x (5 + 20 VOC classes)). Input 1x3x416x416, output 1x125x13x13.

BN statistics look like a trained network's: gamma ~ U(0.7, 1.3), small beta and mean, log-normal
variances, and two "dead" channels per layer whose variance is ~1e-6 (their Conv rows are scaled
down by 1e-3, so the statistics match what those channels would produce).

Usage: python tools/make_default_model.py [OUT]   (default: models/tiny-yolov2-backbone.onnx)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261123
WIDTHS = [16, 32, 64, 64, 128, 128, 256]
HEAD = 125
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "tiny-yolov2-backbone.onnx"


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    nodes, inits = [], []

    def init(name: str, a: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    x, c_in = "images", 3
    for k, c in enumerate(WIDTHS, start=1):
        fan_in = c_in * 9
        w = rng.standard_normal((c, c_in, 3, 3)) * np.sqrt(2.0 / fan_in)
        var = np.exp(rng.standard_normal(c) * 0.5) * 2.0 / 3.0
        dead = rng.choice(c, size=2, replace=False)
        w[dead] *= 1e-3
        var[dead] = 1e-6 * rng.uniform(0.5, 2.0, size=2)
        gamma = rng.uniform(0.7, 1.3, c)
        beta = rng.standard_normal(c) * 0.1
        mean = rng.standard_normal(c) * 0.2
        nodes.append(helper.make_node(
            "Conv", [x, init(f"conv{k}.weight", w)], [f"conv{k}"], name=f"conv{k}",
            kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
        ))
        bn_inputs = [init(f"bn{k}.{p}", v) for p, v in
                     (("scale", gamma), ("bias", beta), ("mean", mean), ("var", var))]
        nodes.append(helper.make_node(
            "BatchNormalization", [f"conv{k}", *bn_inputs], [f"bn{k}"], name=f"bn{k}",
            epsilon=1e-5,
        ))
        nodes.append(helper.make_node("LeakyRelu", [f"bn{k}"], [f"leaky{k}"], name=f"leaky{k}",
                                      alpha=0.1))
        x, c_in = f"leaky{k}", c
        if k <= 5:
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{k}"], name=f"pool{k}",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{k}"
        elif k == 6:
            # darknet's maxpool size=2 stride=1 pads one row/column at the bottom/right.
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{k}"], name=f"pool{k}",
                                          kernel_shape=[2, 2], strides=[1, 1],
                                          pads=[0, 0, 1, 1]))
            x = f"pool{k}"
    w = rng.standard_normal((HEAD, c_in, 1, 1)) * np.sqrt(1.0 / c_in)
    b = rng.standard_normal(HEAD) * 0.1
    nodes.append(helper.make_node("Conv", [x, init("head.weight", w), init("head.bias", b)],
                                  ["grid"], name="head", kernel_shape=[1, 1]))
    graph = helper.make_graph(
        nodes, "tiny-yolov2-backbone",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 416, 416])],
        [helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, HEAD, 13, 13])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
        producer_name="onnxfold tools/make_default_model.py", producer_version="1",
    )
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(build().SerializeToString(deterministic=True))
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
