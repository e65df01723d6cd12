"""A plain numpy decode of darknet's YOLO heads, written from darknet's formulas, for the --demo
page's tests: region/yolo -> boxes and scores, correct_region_boxes, per-class greedy NMS.

`boxes` are (x1, y1, x2, y2) as fractions of the network input and `scores` objectness * class
probability, ordered anchor, row, column: the outputs of `onnxfold convert --head boxes`. The
browser test feeds those (onnxfold's own decode) straight to `detections`; `decode` stays as the
independent check of yolo.js's decode in Node (tests/test_demo_page.py), which starts from raw
conv outputs (logistic, softmax, scale_x_y in JS) where `--head boxes` starts from darknet's
buffers."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def decode(out: np.ndarray, kind: str, anchors: list[list[float]], classes: int, net_w: int,
           net_h: int, raw: bool, scale_x_y: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One head's output [1, A*(5+C), H, W] -> boxes [A*H*W, 4], scores [A*H*W, C] (float64)."""
    a = len(anchors)
    _, _, gh, gw = out.shape
    t = out.astype(np.float64).reshape(a, 5 + classes, gh, gw)
    x, y, w, h, obj, cls = t[:, 0], t[:, 1], t[:, 2], t[:, 3], t[:, 4], t[:, 5:]
    if raw:
        s = scale_x_y if kind == "yolo" else 1.0
        x, y = sigmoid(x) * s - 0.5 * (s - 1), sigmoid(y) * s - 0.5 * (s - 1)
        obj = sigmoid(obj)
        if kind == "region":  # darknet's softmax over the classes
            e = np.exp(cls - cls.max(axis=1, keepdims=True))
            cls = e / e.sum(axis=1, keepdims=True)
        else:
            cls = sigmoid(cls)
    row, col = np.mgrid[0:gh, 0:gw]
    unit_w, unit_h = (gw, gh) if kind == "region" else (net_w, net_h)
    anc = np.asarray(anchors, np.float64)
    bx, by = (col + x) / gw, (row + y) / gh
    bw = np.exp(w) * anc[:, 0, None, None] / unit_w
    bh = np.exp(h) * anc[:, 1, None, None] / unit_h
    boxes = np.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], -1).reshape(-1, 4)
    scores = (obj[:, None] * cls).transpose(0, 2, 3, 1).reshape(-1, classes)
    return boxes, scores


def letterbox_size(w: int, h: int, net_w: int, net_h: int) -> tuple[int, int]:
    if net_w * h > net_h * w:
        return (w * net_h) // h, net_h
    return net_w, (h * net_w) // w


def to_picture(boxes: np.ndarray, w: int, h: int, net_w: int, net_h: int) -> np.ndarray:
    """darknet's correct_region_boxes, then pixels of the w x h picture."""
    nw, nh = letterbox_size(w, h, net_w, net_h)
    ox, oy = (net_w - nw) / 2 / net_w, (net_h - nh) / 2 / net_h
    sx, sy = nw / net_w, nh / net_h
    b = boxes.copy()
    b[:, [0, 2]] = (b[:, [0, 2]] - ox) / sx * w
    b[:, [1, 3]] = (b[:, [1, 3]] - oy) / sy * h
    return b


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, iou_thresh: float) -> list[dict]:
    """Per class, scores > thresh, greedy: drop IoU > iou_thresh with a kept box (do_nms_sort)."""
    dets = []
    for c in range(scores.shape[1]):
        cand = np.nonzero(scores[:, c] > thresh)[0]
        cand = cand[np.argsort(-scores[cand, c], kind="stable")]
        kept: list[int] = []
        for i in cand:
            if all(iou(boxes[i], boxes[k]) <= iou_thresh for k in kept):
                kept.append(int(i))
        dets += [{"index": i, "class": c, "score": float(scores[i, c]),
                  "box": [float(v) for v in boxes[i]]} for i in kept]
    return sorted(dets, key=lambda d: (-d["score"], d["class"], d["index"]))


def detections(boxes: np.ndarray, scores: np.ndarray, w: int, h: int, net_w: int, net_h: int,
               thresh: float, iou_thresh: float) -> list[dict]:
    """Decoded boxes (fractions of the input) and scores -> detections in picture pixels."""
    return nms(to_picture(boxes, w, h, net_w, net_h), scores, thresh, iou_thresh)
