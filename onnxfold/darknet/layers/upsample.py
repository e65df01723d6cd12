"""[upsample] -> Resize (nearest, integer factor) [-> Mul by `scale`]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape


@dataclass
class Upsample(Layer):
    stride: int = 2
    scale: float = 1.0

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        i, s = self.index, float(self.stride)
        scales = g.const(f"upsample{i}.scales", np.array([1, 1, s, s], np.float32))
        name = f"upsample{i}" if self.scale == 1 else f"upsample{i}.nearest"
        # asymmetric + floor: output cell j reads input cell j // stride, as darknet does
        x = g.node("Resize", [inputs[0], "", scales], name, mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        if self.scale != 1:
            x = g.node("Mul", [x, g.const(f"upsample{i}.scale", np.array(self.scale, np.float32))],
                       f"upsample{i}")
        return x


def parse(sec: Section, inp: Shape) -> Upsample:
    stride = sec.get_int("stride", 2)
    if stride < 1:  # pj: a negative stride sums blocks (downsampling); ab has no such mode
        raise sec.error("stride", "a positive stride (onnxfold converts upsampling only)",
                        str(stride))
    scale = sec.get_floats("scale")
    if len(scale) > 1:
        raise sec.error("scale", "one number", sec.raw("scale") or "")
    return Upsample(sec, [sec.index - 1], Shape(inp.c, inp.h * stride, inp.w * stride), [],
                    stride, scale[0] if scale else 1.0)
