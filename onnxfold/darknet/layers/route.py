"""[route] -> Concat over channels (Identity for one source), in the listed order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape


@dataclass
class Route(Layer):
    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        if len(inputs) == 1:
            return g.node("Identity", inputs, f"route{self.index}")
        return g.node("Concat", inputs, f"route{self.index}", axis=1)


def parse(sec: Section, shapes: dict[int, Shape]) -> Route:
    """shapes: output shape of every earlier layer (and -1, the network input)."""
    # pj ignores groups, AlexeyAB slices channels: the two forks compute different things
    sec.only("groups", (1,), "route groups are not supported yet")
    i = sec.index
    sources = []
    for k in sec.get_ints("layers"):
        j = i + k if k < 0 else k
        if not 0 <= j < i:
            raise sec.error("layers", f"layers before this one (0..{i - 1} or -{i}..-1)",
                            f"{k}, which is layer {j}")
        sources.append(j)
    first = shapes[sources[0]]
    for j in sources[1:]:
        s = shapes[j]
        if (s.h, s.w) != (first.h, first.w):
            raise sec.error("layers", f"layers of one size (layer {sources[0]} is {first})",
                            f"layer {j} of {s}")
    out = Shape(sum(shapes[j].c for j in sources), first.h, first.w)
    return Route(sec, sources, out)
