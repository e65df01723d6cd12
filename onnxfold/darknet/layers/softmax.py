"""[softmax] -> Reshape to (groups, n/groups) -> Softmax -> Reshape to (n, 1, 1).

darknet's softmax runs over the flat buffer (C*H*W values, not per position), in `groups`
consecutive parts, as exp(x/t - max/t) / sum. Its output has no shape of its own in darknet
(0x0x0); we give it outputs x 1 x 1, as the references store it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape


@dataclass
class Softmax(Layer):
    groups: int = 1
    temperature: float = 1.0

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        i, n = self.index, self.out.c
        parts = g.const(f"softmax{i}.groups", np.array([self.groups, n // self.groups], np.int64))
        x = g.node("Reshape", [inputs[0], parts], f"softmax{i}.grouped")
        if self.temperature != 1:
            t = g.const(f"softmax{i}.temperature", np.array(self.temperature, np.float32))
            x = g.node("Div", [x, t], f"softmax{i}.tempered")
        x = g.node("Softmax", [x], f"softmax{i}.values", axis=1)
        shape = g.const(f"softmax{i}.shape", np.array([1, n, 1, 1], np.int64))
        return g.node("Reshape", [x, shape], f"softmax{i}")


def parse(sec: Section, inp: Shape) -> Softmax:
    if sec.has("tree"):
        raise sec.error("tree", "no softmax tree (not supported by onnxfold convert)",
                        f"tree={sec.raw('tree')}")
    n = inp.c * inp.h * inp.w
    groups = sec.get_int("groups", 1, minimum=1)
    if n % groups:
        raise sec.error("groups", f"a divisor of the layer's {n} inputs", str(groups))
    t = sec.get_floats("temperature")
    if len(t) > 1 or (t and t[0] == 0):
        raise sec.error("temperature", "one non-zero number", sec.raw("temperature") or "")
    return Softmax(sec, [sec.index - 1], Shape(n, 1, 1), [], groups, t[0] if t else 1.0)
