"""[route] -> Concat over channels (Identity for one source), in the listed order.

The AlexeyAB fork's `groups=G group_id=g` first takes channel slice [g*C/G, (g+1)*C/G) of each
source (a flat slice of its buffer; we require C divisible by G so that it is one). The
original darknet does not read `groups`: with --bn-eps darknet such a cfg is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape, pj_refusal


@dataclass
class Route(Layer):
    groups: int = 1
    group_id: int = 0
    channels: tuple[int, ...] = ()  # of each source

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        i = self.index
        if self.groups > 1:
            parts = []
            for k, (x, c) in enumerate(zip(inputs, self.channels)):
                step = c // self.groups
                lo = step * self.group_id
                ends = [g.const(f"route{i}.slice{k}_{name}", np.array(v, np.int64))
                        for name, v in (("starts", [lo]), ("ends", [lo + step]), ("axes", [1]))]
                parts.append(g.node("Slice", [x, *ends], f"route{i}.group{k}"))
            inputs = parts
        if len(inputs) == 1:
            return g.node("Identity", inputs, f"route{i}")
        return g.node("Concat", inputs, f"route{i}", axis=1)


def parse(sec: Section, shapes: dict[int, Shape], opts: Options) -> Route:
    """shapes: output shape of every earlier layer (and -1, the network input)."""
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
    groups = sec.get_int("groups", 1, minimum=1)
    group_id = sec.get_int("group_id", 0, minimum=0)
    if group_id >= groups:
        raise sec.error("group_id", f"a group below groups={groups}", str(group_id))
    if groups > 1:
        if opts.bn_eps == "darknet":
            raise pj_refusal(sec, "groups", "groups=1", f"groups={groups}",
                             "it ignores route groups")
        for j in sources:
            if shapes[j].c % groups:
                raise sec.error("groups", f"a divisor of every source's channels (layer {j} has "
                                f"{shapes[j].c})", str(groups))
    channels = tuple(shapes[j].c for j in sources)
    out = Shape(sum(channels) // groups, first.h, first.w)
    return Route(sec, sources, out, [], groups, group_id, channels)
