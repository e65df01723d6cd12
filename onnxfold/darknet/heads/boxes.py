"""Every head's darknet buffer -> boxes [1, N, 4] (x1, y1, x2, y2) and scores [1, N, classes].

Per anchor a, row j, column i, with the buffer's x, y already squashed (and scaled):
    cx = (i + x) / W,  cy = (j + y) / H
    w = exp(tw) * anchor_w / unit_w,  h = exp(th) * anchor_h / unit_h
where unit is the grid (W, H) for [region] (anchors in cells) and the network input for [yolo]
(anchors in pixels); score[c] = objectness * p(c).
"""

from __future__ import annotations

import numpy as np

from onnxfold.darknet.heads import Head
from onnxfold.darknet.layers.base import Graph

BOXES, SCORES = "boxes", "scores"


def decode(g: Graph, heads: list[Head]) -> tuple[str, str]:
    """Append the decode of every head; return the names of the boxes and scores outputs."""
    parts = [_one(g, h) for h in heads]
    if len(parts) == 1:
        (b, s), = parts
        return g.node("Identity", [b], BOXES), g.node("Identity", [s], SCORES)
    return (g.node("Concat", [b for b, _ in parts], BOXES, axis=1),
            g.node("Concat", [s for _, s in parts], SCORES, axis=1))


def _one(g: Graph, h: Head) -> tuple[str, str]:
    p, a, c = f"decode{h.layer}", len(h.anchors), h.classes
    x = g.node("Reshape", [h.tensor, g.const(f"{p}.shape", np.array([1, a, 5 + c, h.h, h.w],
                                                                     np.int64))], f"{p}.anchors")
    split = g.const(f"{p}.split", np.array([2, 2, 1, c], np.int64))
    xy, twh, obj, cls = g.multi("Split", [x, split], f"{p}.split_by_entry",
                                ["xy", "wh", "obj", "cls"], axis=2)
    cells = np.stack(np.meshgrid(np.arange(h.w), np.arange(h.h)))  # (2, H, W): column, row
    grid = g.const(f"{p}.grid", cells.reshape(1, 1, 2, h.h, h.w).astype(np.float32))
    size = g.const(f"{p}.grid_size", np.array([h.w, h.h], np.float32).reshape(1, 1, 2, 1, 1))
    centre = g.node("Div", [g.node("Add", [xy, grid], f"{p}.cell_xy"), size], f"{p}.centre")
    anchors = g.const(f"{p}.anchor_wh", np.array(h.anchors, np.float32).reshape(1, a, 2, 1, 1))
    unit = g.const(f"{p}.anchor_unit",
                   np.array(h.anchor_unit(), np.float32).reshape(1, 1, 2, 1, 1))
    wh = g.node("Div", [g.node("Mul", [g.node("Exp", [twh], f"{p}.exp_wh"), anchors],
                               f"{p}.anchor_scaled"), unit], f"{p}.wh")
    half = g.node("Mul", [wh, g.const(f"{p}.half", np.array(0.5, np.float32))], f"{p}.half_wh")
    corners = g.node("Concat", [g.node("Sub", [centre, half], f"{p}.x1y1"),
                                g.node("Add", [centre, half], f"{p}.x2y2")], f"{p}.corners",
                     axis=2)
    scores = g.node("Mul", [obj, cls], f"{p}.class_scores")
    return _rows(g, corners, 4, h, f"{p}.boxes"), _rows(g, scores, c, h, f"{p}.scores")


def _rows(g: Graph, x: str, k: int, h: Head, name: str) -> str:
    """(1, A, k, H, W) -> (1, A*H*W, k): one row per box, anchor-major as darknet counts them."""
    t = g.node("Transpose", [x], f"{name}.last", perm=[0, 1, 3, 4, 2])
    shape = g.const(f"{name}.shape", np.array([1, h.boxes, k], np.int64))
    return g.node("Reshape", [t, shape], name)
