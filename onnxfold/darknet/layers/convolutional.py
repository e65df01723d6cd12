"""[convolutional] -> Conv [-> BatchNormalization] [-> activation].

With batch_normalize=1 the file's `biases` are BN's beta and the Conv has no bias of its own.
The BatchNormalization node is kept (not folded) so that `onnxfold fuse` has the work to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers import activation as act
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape, pj_refusal, positive_out

# Keys of the AlexeyAB fork (or binarized nets) that change the computation: refused unless
# they have their neutral value.
_NEUTRAL = {"binary": 0, "xnor": 0, "flipped": 0, "antialiasing": 0, "sway": 0, "rotate": 0,
            "stretch": 0, "stretch_sway": 0, "coordconv": 0, "assisted_excitation": 0,
            "deform": 0, "cbn": 0}
PJ_EPS = 1e-6  # original darknet: gamma * (x - mean) / (sqrt(var) + 1e-6) + beta
AB_EPS = 1e-5  # AlexeyAB fork: gamma * (x - mean) / sqrt(var + 1e-5) + beta


@dataclass
class Convolutional(Layer):
    filters: int = 0
    size: int = 0
    stride: tuple[int, int] = (1, 1)  # (y, x)
    padding: int = 0
    dilation: int = 1
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
        p, d = self.padding * self.dilation, self.dilation  # ab pads by padding*dilation
        x = g.node("Conv", conv_in, f"conv{i}", kernel_shape=[self.size, self.size],
                   strides=list(self.stride), pads=[p, p, p, p], dilations=[d, d],
                   group=self.groups)
        if self.batch_normalize:
            x = batchnorm(g, x, i, params, opts.bn_eps)
        return act.emit(g, x, f"{self.activation}{i}", self.activation)


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


def parse(sec: Section, inp: Shape, opts: Options) -> Convolutional:
    for key, neutral in _NEUTRAL.items():
        sec.only(key, (neutral,), "not supported by onnxfold convert")
    if sec.has("share_index"):
        raise sec.error("share_index", "no share_index (not supported by onnxfold convert)",
                        f"share_index={sec.raw('share_index')}")
    pj = opts.bn_eps == "darknet"
    n = sec.get_int("filters", 1, minimum=1)
    size = sec.get_int("size", 1, minimum=1)
    stride = sec.get_int("stride", 1, minimum=1)
    # ab: stride_x/stride_y override stride; pj does not read them
    sy, sx = (sec.get_int(k, stride, minimum=1) for k in ("stride_y", "stride_x"))
    dilation = sec.get_int("dilation", 1, minimum=1) if size > 1 else 1  # ab ignores it for 1x1
    if pj:
        for key, value, neutral in (("stride_x", sx, stride), ("stride_y", sy, stride),
                                    ("dilation", dilation, 1)):
            if value != neutral:
                raise pj_refusal(sec, key, f"{key}={neutral}", f"{key}={value}",
                                 "it does not read the key")
    pad = sec.get_int("pad", 0)
    padding = size // 2 if pad else sec.get_int("padding", 0, minimum=0)
    groups = sec.get_int("groups", 1, minimum=1)
    if inp.c % groups or n % groups:
        raise sec.error("groups", f"a divisor of the input channels ({inp.c}) and of filters ({n})",
                        str(groups))
    bn = sec.get_int("batch_normalize", 0) != 0
    activation = act.parse(sec, "logistic", opts.bn_eps)  # logistic: darknet's default
    oh = positive_out(sec, "size", (inp.h + 2 * padding - size) // sy + 1, "height")
    ow = positive_out(sec, "size", (inp.w + 2 * padding - size) // sx + 1, "width")
    if dilation > 1:
        # ab sizes the layer without dilation but im2col fills a dilated one: they must agree
        span = dilation * (size - 1) + 1
        im2col = ((inp.h + 2 * padding * dilation - span) // sy + 1,
                  (inp.w + 2 * padding * dilation - span) // sx + 1)
        if im2col != (oh, ow):
            raise sec.error("dilation", f"a dilation whose output size equals the layer's {oh}x{ow}"
                            " (darknet sizes the layer without dilation)",
                            f"dilation={dilation}, which gives {im2col[0]}x{im2col[1]}")
    if size == 1 and (oh, ow) != (inp.h, inp.w) and (pj or sx == 1):
        # darknet multiplies a 1x1 conv's weights with the input buffer as it is (pj always,
        # ab when stride_x is 1): strides or padding there make a different network
        if pj and not padding:
            raise pj_refusal(sec, "stride", "stride=1 for a 1x1 conv", f"stride={stride}",
                             "it reads a 1x1 conv's input unstrided")
        raise sec.error("padding" if padding else "stride_y", "a 1x1 conv whose output is "
                        f"its input's size {inp.h}x{inp.w} (darknet reads its input as is)",
                        f"{oh}x{ow}")
    blobs = [("biases", n)]
    if bn:
        blobs += [("scales", n), ("rolling_mean", n), ("rolling_variance", n)]
    blobs.append(("weights", n * (inp.c // groups) * size * size))
    return Convolutional(sec, [sec.index - 1], Shape(n, oh, ow), blobs, n, size, (sy, sx),
                         padding, dilation, groups, bn, activation, inp.c)
