"""[region] (YOLOv2's head) -> what the original darknet leaves in the layer's output.

Per anchor the channels are [x, y, w, h, objectness, classes...] in conv layout. pj darknet
applies the logistic to x, y and objectness and a softmax over the classes; w and h stay raw.
With --head raw the layer adds nothing: the model ends with the last convolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape


@dataclass
class Region(Layer):
    num: int = 1
    classes: int = 20
    coords: int = 4
    anchors: list[float] = field(default_factory=list)

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        if opts.head == "raw":
            return inputs[0]
        i, n, k, s = self.index, self.num, 5 + self.classes, self.out
        per_anchor = g.const(f"region{i}.anchor_shape", np.array([1, n, k, s.h, s.w], np.int64))
        x = g.node("Reshape", [inputs[0], per_anchor], f"region{i}.anchors")
        split = g.const(f"region{i}.split", np.array([2, 2, 1, self.classes], np.int64))
        xy, wh, obj, cls = g.multi("Split", [x, split], f"region{i}.split_by_entry",
                                   ["xy", "wh", "obj", "cls"], axis=2)
        parts = [g.node("Sigmoid", [xy], f"region{i}.logistic_xy"), wh,
                 g.node("Sigmoid", [obj], f"region{i}.logistic_obj"),
                 g.node("Softmax", [cls], f"region{i}.softmax", axis=2)]
        x = g.node("Concat", parts, f"region{i}.concat", axis=2)
        shape = g.const(f"region{i}.shape", np.array([1, s.c, s.h, s.w], np.int64))
        return g.node("Reshape", [x, shape], f"region{i}")

    def check_darknet_head(self) -> None:
        sec = self.section
        if self.coords != 4:
            raise sec.error("coords", "coords=4 for --head darknet (or use --head raw)",
                            f"coords={self.coords}")
        if sec.get_int("softmax", 0) != 1:
            raise sec.error("softmax", "softmax=1 for --head darknet (or use --head raw)",
                            f"softmax={sec.raw('softmax') or '0 (no key)'}")
        sec.only("background", (0,), "not supported by --head darknet; use --head raw")
        if sec.has("tree"):
            raise sec.error("tree", "no softmax tree for --head darknet (use --head raw)",
                            f"tree={sec.raw('tree')}")


def parse(sec: Section, inp: Shape, last: bool, head: str) -> Region:
    if not last:
        raise sec.error(None, "[region] as the last layer", "layers after it")
    num = sec.get_int("num", 1, minimum=1)
    classes = sec.get_int("classes", 20, minimum=1)
    coords = sec.get_int("coords", 4, minimum=1)
    if inp.c != num * (coords + 1 + classes):
        raise sec.error(None, f"an input of num*(coords+1+classes) = {num}*({coords}+1+{classes}) "
                        f"= {num * (coords + 1 + classes)} channels", f"{inp.c} (input {inp})")
    anchors = sec.get_floats("anchors")
    if anchors and len(anchors) != 2 * num:
        raise sec.error("anchors", f"2*num = {2 * num} numbers", f"{len(anchors)}")
    layer = Region(sec, [sec.index - 1], inp, [], num, classes, coords, anchors)
    if head == "darknet":
        layer.check_darknet_head()
    return layer
