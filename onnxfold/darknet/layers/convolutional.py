"""[convolutional] -> Conv [-> BatchNormalization] [-> activation].

With batch_normalize=1 the file's `biases` are BN's beta and the Conv has no bias of its own.
The BatchNormalization node is kept (not folded) so that `onnxfold fuse` has the work to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape, positive_out

# darknet activation -> (ONNX op, attributes); linear adds no node
ACTIVATIONS: dict[str, tuple[str, dict[str, float]] | None] = {
    "leaky": ("LeakyRelu", {"alpha": 0.1}),
    "linear": None,
    "logistic": ("Sigmoid", {}),
    "relu": ("Relu", {}),
}
# Keys of the AlexeyAB fork (or binarized nets) that change the computation: refused unless
# they have their neutral value.
_NEUTRAL = {"binary": 0, "xnor": 0, "flipped": 0, "antialiasing": 0, "dilation": 1,
            "sway": 0, "rotate": 0, "stretch": 0, "stretch_sway": 0, "coordconv": 0,
            "assisted_excitation": 0, "deform": 0}
PJ_EPS = 1e-6  # original darknet: gamma * (x - mean) / (sqrt(var) + 1e-6) + beta
AB_EPS = 1e-5  # AlexeyAB fork: gamma * (x - mean) / sqrt(var + 1e-5) + beta


def activation(sec: Section) -> str:
    name = sec.get_str("activation", "logistic")  # darknet's default when the key is absent
    if name not in ACTIVATIONS:
        raise sec.error("activation", f"an activation onnxfold converts ({', '.join(ACTIVATIONS)})",
                        repr(name))
    return name


@dataclass
class Convolutional(Layer):
    filters: int = 0
    size: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 1
    batch_normalize: bool = False
    activation: str = "logistic"
    in_channels: int = 0

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        i, n = self.index, self.filters
        w = params["weights"].reshape(n, self.in_channels // self.groups, self.size, self.size)
        conv_in = [inputs[0], g.const(f"conv{i}.weight", w)]
        if not self.batch_normalize:
            conv_in.append(g.const(f"conv{i}.bias", params["biases"]))
        p = self.padding
        x = g.node("Conv", conv_in, f"conv{i}", kernel_shape=[self.size, self.size],
                   strides=[self.stride, self.stride], pads=[p, p, p, p], group=self.groups)
        if self.batch_normalize:
            x = batchnorm(g, x, i, params, opts.bn_eps)
        act = ACTIVATIONS[self.activation]
        if act is not None:
            x = g.node(act[0], [x], f"{self.activation}{i}", **act[1])
        return x


def batchnorm(g: Graph, x: str, i: int, params: dict[str, np.ndarray], flavour: str) -> str:
    """A BatchNormalization node computing exactly the asked-for darknet flavour."""
    var = params["rolling_variance"]
    if flavour == "darknet":
        # sqrt(var') = sqrt(var) + 1e-6 with epsilon 0: pj's formula, in float64, cast once
        var = np.square(np.sqrt(var.astype(np.float64)) + PJ_EPS).astype(np.float32)
        eps = 0.0
    else:
        eps = AB_EPS
    names = [g.const(f"bn{i}.{k}", v) for k, v in (
        ("scale", params["scales"]), ("bias", params["biases"]),
        ("mean", params["rolling_mean"]), ("var", var))]
    return g.node("BatchNormalization", [x, *names], f"bn{i}", epsilon=eps)


def parse(sec: Section, inp: Shape) -> Convolutional:
    for key, neutral in _NEUTRAL.items():
        sec.only(key, (neutral,), "not supported by onnxfold convert")
    n = sec.get_int("filters", 1, minimum=1)
    size = sec.get_int("size", 1, minimum=1)
    stride = sec.get_int("stride", 1, minimum=1)
    for key in ("stride_x", "stride_y"):
        sec.only(key, (stride,), "only equal strides are supported")
    pad = sec.get_int("pad", 0)
    padding = size // 2 if pad else sec.get_int("padding", 0, minimum=0)
    groups = sec.get_int("groups", 1, minimum=1)
    if inp.c % groups or n % groups:
        raise sec.error("groups", f"a divisor of the input channels ({inp.c}) and of filters ({n})",
                        str(groups))
    bn = sec.get_int("batch_normalize", 0) != 0
    act = activation(sec)
    oh = positive_out(sec, "size", (inp.h + 2 * padding - size) // stride + 1, "height")
    ow = positive_out(sec, "size", (inp.w + 2 * padding - size) // stride + 1, "width")
    blobs = [("biases", n)]
    if bn:
        blobs += [("scales", n), ("rolling_mean", n), ("rolling_variance", n)]
    blobs.append(("weights", n * (inp.c // groups) * size * size))
    return Convolutional(sec, [sec.index - 1], Shape(n, oh, ow), blobs, n, size, stride, padding,
                         groups, bn, act, inp.c)
