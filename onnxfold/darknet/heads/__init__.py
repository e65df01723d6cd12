"""Detection heads after the network: decode every [region]/[yolo] head into boxes and scores,
optionally followed by NonMaxSuppression.

The layers emit each head's darknet buffer (what `--head darknet` outputs); `describe` turns
those into `Head` records and `Decode.emit` appends the ONNX nodes. Outputs (see README):

- `boxes  [1, N, 4]` float32: (x1, y1, x2, y2) as fractions of the network input's width and
  height (not clipped). N = sum over heads of anchors*H*W, ordered head (cfg order), anchor,
  row, column: darknet's own order within one layer.
- `scores [1, N, classes]` float32: objectness * class probability, darknet's per-class score
  before its threshold (darknet zeroes scores <= thresh; we leave that to NMS or the user).
- with NMS: `detections [K, 7]` float32 rows (batch, class, score, x1, y1, x2, y2), per class
  greedy IoU suppression as darknet's do_nms_sort, sorted by descending score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from onnx import TensorProto, ValueInfoProto, helper

from onnxfold.darknet.layers.base import Graph, Layer
from onnxfold.errors import OnnxfoldError

KINDS = ("region", "yolo")
DEFAULT_SCORE_THRESH = 0.25  # AlexeyAB's detector default (pj's `detector test` uses 0.5)
DEFAULT_IOU_THRESH = 0.45  # both forks' nms threshold


@dataclass(frozen=True)
class Head:
    """One detection head as the decoder needs it; `tensor` is in darknet's conv layout
    (1, len(anchors)*(5+classes), h, w) with x, y (and for yolo, scale_x_y) already applied."""

    kind: str  # region | yolo
    layer: int
    h: int
    w: int
    anchors: tuple[tuple[float, float], ...]  # region: grid cells; yolo: input pixels (masked)
    classes: int
    net_w: int
    net_h: int
    scale_x_y: float = 1.0  # yolo (ab): informative, the buffer has it applied
    tensor: str = ""  # the ONNX tensor holding the head's buffer, known once the layers are built

    @property
    def boxes(self) -> int:
        return len(self.anchors) * self.h * self.w

    def anchor_unit(self) -> tuple[int, int]:
        """What anchors are divided by: the grid for region, the network input for yolo."""
        return (self.w, self.h) if self.kind == "region" else (self.net_w, self.net_h)


@dataclass(frozen=True)
class Nms:
    score_thresh: float = DEFAULT_SCORE_THRESH
    iou_thresh: float = DEFAULT_IOU_THRESH
    max_per_class: int | None = None  # None: no limit (every box may be kept)


@dataclass
class Decode:
    """--head boxes [--nms]: what to append after the network."""

    nms: Nms | None = None
    heads: list[Head] = field(default_factory=list)

    def describe(self, layers: list[Layer], net_w: int, net_h: int) -> None:
        """Read the heads from the plan's layers (before any weights are read)."""
        self.heads = describe(layers, net_w, net_h, self.nms is not None)

    def emit(self, g: Graph, names: dict[int, str]) -> list[ValueInfoProto]:
        """Append the decode (and NMS) nodes reading the heads' tensors; return the outputs."""
        from onnxfold.darknet.heads import boxes, nms

        heads = [replace(h, tensor=names[h.layer]) for h in self.heads]
        b, s = boxes.decode(g, heads)
        n, classes = sum(h.boxes for h in heads), heads[0].classes
        if self.nms is None:
            return [helper.make_tensor_value_info(b, TensorProto.FLOAT, [1, n, 4]),
                    helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, n, classes])]
        d = nms.select(g, b, s, self.nms, n)
        return [helper.make_tensor_value_info(d, TensorProto.FLOAT, ["K", 7])]

    def metadata(self) -> dict[str, str]:
        n = sum(h.boxes for h in self.heads)
        c = self.heads[0].classes
        meta = {"darknet.heads": "; ".join(_head_text(h) for h in self.heads)}
        if self.nms is None:
            meta["darknet.outputs"] = (
                f"boxes [1,{n},4] (x1,y1,x2,y2) as fractions of the input width/height; "
                f"scores [1,{n},{c}] objectness*class probability; "
                "boxes ordered by head, anchor, row, column")
        else:
            m = self.nms.max_per_class
            meta["darknet.outputs"] = (
                "detections [K,7] rows (batch, class, score, x1, y1, x2, y2), box corners as "
                "fractions of the input width/height, sorted by descending score")
            meta["darknet.nms"] = (f"per class, score > {self.nms.score_thresh:g}, "
                                   f"IoU > {self.nms.iou_thresh:g} suppressed, "
                                   + (f"at most {m} per class" if m else "no limit per class"))
        return meta


def _head_text(h: Head) -> str:
    unit = "grid cells" if h.kind == "region" else "pixels"
    anchors = ",".join(f"{a:g}x{b:g}" for a, b in h.anchors)
    text = f"layer {h.layer} {h.kind} {h.w}x{h.h} anchors ({unit}) {anchors}"
    return text + (f" scale_x_y {h.scale_x_y:g}" if h.scale_x_y != 1 else "")


def describe(layers: list[Layer], net_w: int, net_h: int, nms: bool = False) -> list[Head]:
    """Every [region]/[yolo] layer as a Head; refuses what the decode does not reproduce."""
    heads = []
    for layer in layers:
        if layer.kind == "region":
            heads.append(_region(layer, net_w, net_h))
        elif layer.kind == "yolo":
            heads.append(_yolo(layer, net_w, net_h, nms))
    if not heads:
        last = layers[-1]
        raise last.section.error(None, "a network with [region] or [yolo] layers for --head "
                                 "boxes", "none")
    first = heads[0]
    for h, layer in zip(heads, (x for x in layers if x.kind in KINDS)):
        if h.classes != first.classes:
            raise layer.section.error("classes", f"classes={first.classes} in every head (as "
                                      f"layer {first.layer}) for one scores tensor",
                                      f"classes={h.classes}")
    return heads


def _region(layer: Layer, net_w: int, net_h: int) -> Head:
    sec, out = layer.section, layer.out
    num, classes = sec.get_int("num", 1), sec.get_int("classes", 20)
    anchors = sec.get_floats("anchors") or [0.5] * (2 * num)  # darknet's default biases
    return Head("region", layer.index, out.h, out.w, _pairs(anchors[:2 * num]),
                classes, net_w, net_h)


def _yolo(layer: Layer, net_w: int, net_h: int, nms: bool) -> Head:
    sec, out = layer.section, layer.out
    total = sec.get_int("num", 1, minimum=1)
    classes = sec.get_int("classes", 20, minimum=1)
    mask = sec.get_ints("mask") if sec.has("mask") else list(range(total))
    anchors = sec.get_floats("anchors") or [0.5] * (2 * total)  # darknet's default biases
    if len(anchors) != 2 * total:
        raise sec.error("anchors", f"2*num = {2 * total} numbers", f"{len(anchors)}")
    bad = [m for m in mask if not 0 <= m < len(anchors) // 2]
    if bad:
        raise sec.error("mask", f"anchor indices in 0..{len(anchors) // 2 - 1} "
                        f"({len(anchors) // 2} anchors)", f"{bad[0]}")
    if out.c != len(mask) * (5 + classes):
        raise sec.error(None, f"an input of len(mask)*(5+classes) = {len(mask)}*(5+{classes}) "
                        f"channels", f"{out.c} (input {out})")
    sec.only("new_coords", (0,), "--head boxes decodes exp(w)*anchor boxes")
    scale = sec.get_floats("scale_x_y") or [1.0]
    if nms:
        kind = sec.get_str("nms_kind", "default")
        if kind not in ("default", "greedynms"):
            raise sec.error("nms_kind", "nms_kind=greedynms (or none): --nms is ONNX's greedy "
                            "IoU NonMaxSuppression", f"nms_kind={kind}")
    return Head("yolo", layer.index, out.h, out.w,
                _pairs([anchors[k] for m in mask for k in (2 * m, 2 * m + 1)]),
                classes, net_w, net_h, scale[0])


def _pairs(values: list[float]) -> tuple[tuple[float, float], ...]:
    return tuple((values[k], values[k + 1]) for k in range(0, len(values) - 1, 2))


def check_nms(nms: Nms) -> Nms:
    """The NMS options as the command line gave them, checked."""
    for flag, v in (("--score-thresh", nms.score_thresh), ("--iou-thresh", nms.iou_thresh)):
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise OnnxfoldError(flag, "a number in [0, 1]", f"{v:g}")
    if nms.max_per_class is not None and nms.max_per_class < 1:
        raise OnnxfoldError("--max-per-class", "an integer >= 1", str(nms.max_per_class))
    return nms
