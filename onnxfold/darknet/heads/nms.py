"""boxes [1, N, 4] + scores [1, N, C] -> detections [K, 7] with ONNX NonMaxSuppression.

darknet's do_nms_sort works per class: sort by that class's score, and zero the class score of
every later box whose IoU with a kept one is > thresh. NonMaxSuppression does the same per
(batch, class), keeping scores > score_threshold, which is darknet's `prob > thresh`.
"""

from __future__ import annotations

import numpy as np

from onnxfold.darknet.heads import Nms
from onnxfold.darknet.layers.base import Graph

DETECTIONS = "detections"


def select(g: Graph, boxes: str, scores: str, nms: Nms, n: int) -> str:
    """Append NMS and the gathers that build one row per kept (class, box)."""
    per_class = g.node("Transpose", [scores], "nms.scores_by_class", perm=[0, 2, 1])  # 1,C,N
    limit = nms.max_per_class or n
    kept = g.node("NonMaxSuppression", [
        boxes, per_class,
        g.const("nms.max_per_class", np.array([limit], np.int64)),
        g.const("nms.iou_thresh", np.array([nms.iou_thresh], np.float32)),
        g.const("nms.score_thresh", np.array([nms.score_thresh], np.float32)),
    ], "nms", center_point_box=0)  # K x (batch, class, box)
    score = g.node("GatherND", [per_class, kept], "nms.score")  # K
    batch_box = g.node("Gather", [kept, g.const("nms.batch_box_cols", np.array([0, 2], np.int64))],
                       "nms.batch_box", axis=1)
    coords = g.node("GatherND", [boxes, batch_box], "nms.box")  # K x 4
    k = g.node("Shape", [score], "nms.count")
    top, order = g.multi("TopK", [score, k], "nms.sort", ["values", "indices"], axis=0,
                         largest=1, sorted=1)
    ids = g.node("Cast", [g.node("Gather", [kept, order], "nms.sorted_ids", axis=0)],
                 "nms.ids", to=1)  # float: K x 3
    cols = g.node("Gather", [ids, g.const("nms.batch_class_cols", np.array([0, 1], np.int64))],
                  "nms.batch_class", axis=1)
    column = g.const("nms.column", np.array([-1, 1], np.int64))
    return g.node("Concat", [cols, g.node("Reshape", [top, column], "nms.score_column"),
                             g.node("Gather", [coords, order], "nms.sorted_box", axis=0)],
                  DETECTIONS, axis=1)
