"""[connected] -> Flatten -> Gemm [-> BatchNormalization] [-> activation] -> Reshape (n, 1, 1).

The file holds biases[n], weights[n*inputs] (row per output; stored transposed, inputs x n,
when the header's major or minor exceeds 1000) and only then, with batch_normalize=1, scales,
rolling_mean and rolling_variance: not the conv order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers import activation as act
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape
from onnxfold.darknet.layers.convolutional import batchnorm


@dataclass
class Connected(Layer):
    filters: int = 1
    batch_normalize: bool = False
    activation: str = "logistic"
    in_channels: int = 0  # the flattened input: C*H*W
    size: int = 1
    groups: int = 1

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        i, n = self.index, self.filters
        x = g.node("Flatten", inputs, f"fc{i}.flatten", axis=1)
        w = params["weights"].reshape(n, self.in_channels)
        gemm_in = [x, g.const(f"fc{i}.weight", w)]
        if not self.batch_normalize:
            gemm_in.append(g.const(f"fc{i}.bias", params["biases"]))
        x = g.node("Gemm", gemm_in, f"fc{i}", transB=1)
        if self.batch_normalize:
            x = batchnorm(g, x, i, params, opts.bn_eps)
        x = act.emit(g, x, f"{self.activation}{i}", self.activation)
        shape = g.const(f"connected{i}.shape", np.array([1, n, 1, 1], np.int64))
        return g.node("Reshape", [x, shape], f"connected{i}")


def parse(sec: Section, inp: Shape, opts: Options) -> Connected:
    n = sec.get_int("output", 1, minimum=1)
    bn = sec.get_int("batch_normalize", 0) != 0
    activation = act.parse(sec, "logistic", opts.bn_eps)  # logistic: darknet's default
    inputs = inp.c * inp.h * inp.w
    blobs = [("biases", n), ("weights", n * inputs)]
    if bn:
        blobs += [("scales", n), ("rolling_mean", n), ("rolling_variance", n)]
    return Connected(sec, [sec.index - 1], Shape(n, 1, 1), blobs, n, bn, activation, inputs)
