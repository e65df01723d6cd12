"""[maxpool] -> MaxPool with darknet's padding rule.

darknet: padding defaults to size-1, out = (in + padding - size) / stride + 1, and the window
starts at -(padding/2). So the pads are padding/2 at the start and the rest at the end: size 2
stride 1 (yolov2-tiny) keeps 13x13 with pads [0, 0, 1, 1]. Cells outside the input never win,
as with ONNX MaxPool's pads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape, positive_out

_NEUTRAL = {"maxpool_depth": 0, "antialiasing": 0}


@dataclass
class Maxpool(Layer):
    size: int = 1
    stride: int = 1
    begin: int = 0
    end: int = 0

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        b, e = self.begin, self.end
        return g.node("MaxPool", inputs, f"maxpool{self.index}", kernel_shape=[self.size] * 2,
                      strides=[self.stride] * 2, pads=[b, b, e, e])


def parse(sec: Section, inp: Shape) -> Maxpool:
    for key, neutral in _NEUTRAL.items():
        sec.only(key, (neutral,), "not supported by onnxfold convert")
    if sec.has("out_channels"):
        sec.only("out_channels", (inp.c,), "not supported by onnxfold convert")
    stride = sec.get_int("stride", 1, minimum=1)
    for key in ("stride_x", "stride_y"):
        sec.only(key, (stride,), "only equal strides are supported")
    size = sec.get_int("size", stride, minimum=1)
    padding = sec.get_int("padding", size - 1, minimum=0)
    oh = positive_out(sec, "size", (inp.h + padding - size) // stride + 1, "height")
    ow = positive_out(sec, "size", (inp.w + padding - size) // stride + 1, "width")
    begin = padding // 2
    # the last window's first row/column must still be inside the input
    if begin >= size or any((o - 1) * stride - begin >= n for o, n in ((oh, inp.h), (ow, inp.w))):
        # darknet would output -FLT_MAX for a window with no input cell; nobody means that
        raise sec.error("padding", f"padding that leaves an input cell in every {size}x{size} "
                        "window", str(padding))
    return Maxpool(sec, [sec.index - 1], Shape(inp.c, oh, ow), [], size, stride, begin,
                   padding - begin)
