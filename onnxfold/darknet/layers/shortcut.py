"""[shortcut] -> Add (+ activation): `act(x + from)`, with the original darknet's rule for maps
of different shapes.

pj (src/blas.c shortcut_cpu) adds only the overlap: channels below min(C), and when the widths
differ it samples the larger map with stride w_big/w_small, adding into every `sample`-th cell of
the output when `from` is the smaller one. resnet50.cfg relies on that. It also reads `alpha`
and `beta`: out = alpha*x + beta*from on the overlap, x elsewhere. The AlexeyAB fork asserts equal
width and height, adds the first min(C) channels, and does not read alpha/beta.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers import activation as act
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape

_EMPTY = Shape(0, 0, 0)


@dataclass
class Shortcut(Layer):
    activation: str = "linear"
    alpha: float = 1.0
    beta: float = 1.0
    frm: Shape = field(default_factory=lambda: _EMPTY)

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        i, x, frm, out = self.index, inputs[0], self.frm, self.out
        placed = inputs[1] if frm == out else self._place(g, inputs[1])
        if self.beta != 1:
            placed = g.node("Mul", [placed, g.const(f"shortcut{i}.beta",
                                                    np.array(self.beta, np.float32))],
                            f"shortcut{i}.scaled")
        if self.alpha != 1:
            # alpha applies only where `from` is added: a constant per-cell factor
            where = np.zeros((1, out.c, out.h, out.w), np.float32)
            where[:, :self.minc, :self.minh * self.sample:self.sample,
                  :self.minw * self.sample:self.sample] = self.alpha - 1
            x = g.node("Mul", [x, g.const(f"shortcut{i}.alpha", where + 1)], f"shortcut{i}.alpha_x")
        y = g.node("Add", [x, placed], f"shortcut{i}.add" if self.activation != "linear"
                   else f"shortcut{i}")
        return act.emit(g, y, f"shortcut{i}", self.activation)

    @property
    def stride(self) -> int:
        return max(self.frm.w // self.out.w, 1)

    @property
    def sample(self) -> int:
        return max(self.out.w // self.frm.w, 1)

    @property
    def minc(self) -> int:
        return min(self.frm.c, self.out.c)

    @property
    def minh(self) -> int:
        return min(self.frm.h, self.out.h)

    @property
    def minw(self) -> int:
        return min(self.frm.w, self.out.w)

    def _place(self, g: Graph, src: str) -> str:
        """`from` laid out on the output's grid: sampled, spread, zero where nothing is added."""
        i, out, st, sa = self.index, self.out, self.stride, self.sample
        c, h, w = self.minc, self.minh, self.minw
        spec = (("starts", [0, 0, 0]), ("ends", [c, h * st, w * st]), ("axes", [1, 2, 3]),
                ("steps", [1, st, st]))
        x = g.node("Slice", [src, *(g.const(f"shortcut{i}.slice_{k}", np.array(v, np.int64))
                                    for k, v in spec)], f"shortcut{i}.sampled")
        if sa > 1:  # every sa-th output cell: interleave sa-1 zeros after each value
            x = g.node("Reshape", [x, g.const(f"shortcut{i}.cells_shape",
                                              np.array([1, c, h, 1, w, 1], np.int64))],
                       f"shortcut{i}.cells")
            pads = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, sa - 1, 0, sa - 1], np.int64)
            x = g.node("Pad", [x, g.const(f"shortcut{i}.spread_pads", pads)], f"shortcut{i}.spread")
            x = g.node("Reshape", [x, g.const(f"shortcut{i}.spread_shape",
                                              np.array([1, c, h * sa, w * sa], np.int64))],
                       f"shortcut{i}.spread_grid")
        end = [out.c - c, out.h - h * sa, out.w - w * sa]
        if any(end):
            pads = np.array([0, 0, 0, 0, 0, *end], np.int64)
            x = g.node("Pad", [x, g.const(f"shortcut{i}.pads", pads)], f"shortcut{i}.placed")
        return x


def parse(sec: Section, shapes: dict[int, Shape], opts: Options) -> Shortcut:
    i = sec.index
    froms = sec.get_ints("from")
    if len(froms) != 1:
        raise sec.error("from", "one layer (onnxfold converts shortcuts of two layers)",
                        sec.raw("from") or "")
    k = froms[0]
    j = i + k if k < 0 else k
    if not 0 <= j < i:
        raise sec.error("from", f"a layer before this one (0..{i - 1} or -{i}..-1)",
                        f"{k}, which is layer {j}")
    wt = sec.get_str("weights_type", "none")
    if wt != "none":
        raise sec.error("weights_type", "weights_type=none (weighted shortcuts are not "
                        "supported by onnxfold convert)", f"weights_type={wt}")
    out, frm = shapes[i - 1], shapes[j]
    pj = opts.bn_eps == "darknet"
    if (frm.w, frm.h) != (out.w, out.h):
        if not pj:
            raise sec.error("from", f"a layer of this one's width and height {out.w}x{out.h} "
                            "(the AlexeyAB fork aborts on others; the original darknet, "
                            "--bn-eps darknet, samples)", f"layer {j} of {frm}")
        if (frm.w // out.w, out.w // frm.w) != (frm.h // out.h, out.h // frm.h):
            raise sec.error("from", f"a layer whose size relates to {out.h}x{out.w} by the same "
                            "factor in height and width (darknet asserts it)",
                            f"layer {j} of {frm}")
    alpha = beta = 1.0
    if pj:  # the fork does not read them
        alpha, beta = (_float(sec, key) for key in ("alpha", "beta"))
    activation = act.parse(sec, "linear", opts.bn_eps)
    return Shortcut(sec, [i - 1, j], out, [], activation, alpha, beta, frm)


def _float(sec: Section, key: str) -> float:
    values = sec.get_floats(key)
    if len(values) > 1:
        raise sec.error(key, "one number", sec.raw(key) or "")
    return values[0] if values else 1.0
