"""[reorg] -> Reshape, SpaceToDepth, Reshape: darknet's reorg, which is not a plain SpaceToDepth.

darknet (reorg_cpu with forward=0) reads the (C, H, W) buffer as (C/s^2, H*s, W*s), rearranges
it as SpaceToDepth(s) does, and calls the result (C*s^2, H/s, W/s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape


@dataclass
class Reorg(Layer):
    stride: int = 1
    inp: Shape = field(default_factory=lambda: Shape(0, 0, 0))

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        i, s, c, h, w = self.index, self.stride, self.inp.c, self.inp.h, self.inp.w
        view = g.const(f"reorg{i}.view_shape", np.array([1, c // (s * s), h * s, w * s], np.int64))
        x = g.node("Reshape", [inputs[0], view], f"reorg{i}.view")
        x = g.node("SpaceToDepth", [x], f"reorg{i}.s2d", blocksize=s)
        o = self.out
        shape = g.const(f"reorg{i}.shape", np.array([1, o.c, o.h, o.w], np.int64))
        return g.node("Reshape", [x, shape], f"reorg{i}")


def parse(sec: Section, inp: Shape) -> Reorg:
    for key in ("reverse", "flatten", "extra"):
        sec.only(key, (0,), "not supported by onnxfold convert")
    s = sec.get_int("stride", 1, minimum=1)
    if inp.h % s or inp.w % s or inp.c % (s * s):
        raise sec.error("stride", f"a stride s with H, W divisible by s and C by s*s (input {inp})",
                        str(s))
    return Reorg(sec, [sec.index - 1], Shape(inp.c * s * s, inp.h // s, inp.w // s), [], s, inp)
