"""[yolo] (YOLOv3/v4 heads) -> what darknet leaves in the layer's output, or nothing (--head raw).

Per anchor of `mask` the channels are [x, y, w, h, objectness, classes...] in conv layout; both
forks apply the logistic to x, y, objectness and the classes and leave w, h raw. The AlexeyAB
fork then maps x, y to x*scale_x_y - (scale_x_y - 1)/2; the original darknet ignores scale_x_y.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape, pj_refusal


@dataclass
class Yolo(Layer):
    classes: int = 20
    mask: list[int] = field(default_factory=list)
    anchors: list[float] = field(default_factory=list)
    scale_x_y: float = 1.0

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        if opts.head == "raw":
            return inputs[0]
        i, n, s = self.index, len(self.mask), self.out
        per_anchor = g.const(f"yolo{i}.anchor_shape",
                             np.array([1, n, 5 + self.classes, s.h, s.w], np.int64))
        x = g.node("Reshape", [inputs[0], per_anchor], f"yolo{i}.anchors")
        split = g.const(f"yolo{i}.split", np.array([2, 2, 1 + self.classes], np.int64))
        xy, wh, scores = g.multi("Split", [x, split], f"yolo{i}.split_by_entry",
                                 ["xy", "wh", "scores"], axis=2)
        xy = g.node("Sigmoid", [xy], f"yolo{i}.logistic_xy")
        if self.scale_x_y != 1:
            sxy = self.scale_x_y
            xy = g.node("Mul", [xy, g.const(f"yolo{i}.scale_x_y", np.array(sxy, np.float32))],
                        f"yolo{i}.scaled_xy")
            shift = np.array(-0.5 * (sxy - 1), np.float32)
            xy = g.node("Add", [xy, g.const(f"yolo{i}.shift_xy", shift)], f"yolo{i}.shifted_xy")
        scores = g.node("Sigmoid", [scores], f"yolo{i}.logistic_scores")
        x = g.node("Concat", [xy, wh, scores], f"yolo{i}.concat", axis=2)
        shape = g.const(f"yolo{i}.shape", np.array([1, s.c, s.h, s.w], np.int64))
        return g.node("Reshape", [x, shape], f"yolo{i}")


def parse(sec: Section, inp: Shape, opts: Options) -> Yolo:
    classes = sec.get_int("classes", 20, minimum=1)
    total = sec.get_int("num", 1, minimum=1)
    mask = sec.get_ints("mask") if sec.has("mask") else None  # darknet: no mask is 0..num-1
    if mask is not None and not all(0 <= m < total for m in mask):
        raise sec.error("mask", f"anchor indices in 0..{total - 1} (num={total})",
                        sec.raw("mask") or "")
    n = total if mask is None else len(mask)
    want = n * (4 + 1 + classes)
    if inp.c != want:
        what = "num" if mask is None else "len(mask)"
        raise sec.error(None, f"an input of {what}*(4+1+classes) = {n}*(4+1+{classes}) = {want} "
                        "channels", f"{inp.c} (input {inp})")
    mask = list(range(total)) if mask is None else mask
    anchors = sec.get_floats("anchors")
    if anchors and len(anchors) != 2 * total:
        raise sec.error("anchors", f"2*num = {2 * total} numbers", f"{len(anchors)}")
    sec.only("new_coords", (0,), "not supported by onnxfold convert")
    sxy = sec.get_floats("scale_x_y")
    if len(sxy) > 1:
        raise sec.error("scale_x_y", "one number", sec.raw("scale_x_y") or "")
    scale = sxy[0] if sxy else 1.0
    if scale != 1 and opts.bn_eps == "darknet":
        raise pj_refusal(sec, "scale_x_y", "scale_x_y=1", f"scale_x_y={sec.raw('scale_x_y')}",
                         "it ignores scale_x_y")
    return Yolo(sec, [sec.index - 1], inp, [], classes, mask, anchors, scale)
