"""--head boxes / --nms against a plain numpy decode of darknet's own head outputs.

The numpy side is written here from darknet's formulas (get_region_box, get_yolo_box and the
class scores of get_region_detections / get_yolo_detections), in float64, reading the
reference buffers of ../shared/darknet/ref: it shares no code with onnxfold/darknet/heads/.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxfold.darknet import convert_darknet
from onnxfold.darknet.build import OPSET
from onnxfold.darknet.cfg import read_cfg
from onnxfold.darknet.heads import Decode, Nms
from onnxfold.darknet.layers.base import Graph, Layer, Shape
from onnxfold.parity.run import session
from tests.darknet.helpers import manifest, need_shared

FLAVOUR = {"pj": "darknet", "ab": "alexeyab"}
REGION_CASES = [
    pytest.param(("yolov2-tiny", "pj"), id="yolov2-tiny-pj"),
    pytest.param(("yolov2-tiny", "ab"), id="yolov2-tiny-ab"),
    pytest.param(("yolov2-tiny-voc", "pj"), id="yolov2-tiny-voc-pj"),
    pytest.param(("yolov2-tiny-voc", "ab"), id="yolov2-tiny-voc-ab"),
    pytest.param(("yolov2", "pj"), id="yolov2-pj", marks=pytest.mark.slow),
    pytest.param(("yolov2", "ab"), id="yolov2-ab", marks=pytest.mark.slow),
]
BIG = {"yolov3", "yolov3-spp", "yolov4"}
YOLO_MODELS = ["yolov3-tiny", "yolov3-tiny-prn", "yolov4-tiny", "yolov4-tiny-3l", "yolov3",
               "yolov3-spp", "yolov4"]
YOLO_CASES = [
    pytest.param((model, flavour), id=f"{model}-{flavour}",
                 marks=[pytest.mark.slow] if model in BIG else [])
    for model in YOLO_MODELS for flavour in ("pj", "ab")
    if not (flavour == "pj" and model.startswith("yolov4"))  # no pj reference (see manifests)
]


# ---- the independent decode -------------------------------------------------------------

def logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def corners(cx, cy, w, h) -> np.ndarray:
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def decode_pj_region(buf, num, classes, anchors, gh, gw):
    """pj's region buffer (num*(5+C), H, W), x, y already logistic: boxes in grid units."""
    x = buf.astype(np.float64).reshape(num, 5 + classes, gh, gw)
    boxes, scores = [], []
    col, row = np.meshgrid(np.arange(gw), np.arange(gh))
    for n in range(num):
        cx = (col + x[n, 0]) / gw
        cy = (row + x[n, 1]) / gh
        w = np.exp(x[n, 2]) * anchors[2 * n] / gw
        h = np.exp(x[n, 3]) * anchors[2 * n + 1] / gh
        boxes.append(corners(cx, cy, w, h).reshape(-1, 4))
        scores.append((x[n, 4] * x[n, 5:]).reshape(classes, -1).T)
    return np.concatenate(boxes), np.concatenate(scores)


def decode_ab_region(buf, num, classes, anchors, gh, gw):
    """ab's region buffer: position-major (H*W, num*(5+C)), x and y raw (ab squashes them in
    get_region_box); returned in darknet's anchor-major detection order."""
    x = buf.astype(np.float64).reshape(gh * gw, num, 5 + classes)
    boxes = np.zeros((num, gh * gw, 4))
    scores = np.zeros((num, gh * gw, classes))
    for i in range(gh * gw):
        row, col = divmod(i, gw)
        for n in range(num):
            e = x[i, n]
            cx, cy = (col + logistic(e[0])) / gw, (row + logistic(e[1])) / gh
            w, h = np.exp(e[2]) * anchors[2 * n] / gw, np.exp(e[3]) * anchors[2 * n + 1] / gh
            boxes[n, i] = corners(cx, cy, w, h)
            scores[n, i] = e[4] * e[5:]
    return boxes.reshape(-1, 4), scores.reshape(-1, classes)


def decode_yolo(buf, anchors, classes, gh, gw, net_w, net_h):
    """A [yolo] buffer (A*(5+C), H, W) with x, y (scaled), obj, classes squashed; `anchors`
    the masked (w, h) pairs in input pixels."""
    a = len(anchors)
    x = buf.astype(np.float64).reshape(a, 5 + classes, gh, gw)
    col, row = np.meshgrid(np.arange(gw), np.arange(gh))
    boxes, scores = [], []
    for n, (aw, ah) in enumerate(anchors):
        cx, cy = (col + x[n, 0]) / gw, (row + x[n, 1]) / gh
        w, h = np.exp(x[n, 2]) * aw / net_w, np.exp(x[n, 3]) * ah / net_h
        boxes.append(corners(cx, cy, w, h).reshape(-1, 4))
        scores.append((x[n, 4] * x[n, 5:]).reshape(classes, -1).T)
    return np.concatenate(boxes), np.concatenate(scores)


def yolo_sections(model: str) -> list:
    darknet = need_shared()
    cfg = read_cfg(darknet / manifest(model)["cfg_run"])
    return [s for s in cfg.layers if s.kind == "yolo"]


def yolo_anchors(sec) -> list[tuple[float, float]]:
    values = [float(v) for v in sec.raw("anchors").split(",") if v]
    mask = [int(v) for v in sec.raw("mask").split(",")]
    return [(values[2 * m], values[2 * m + 1]) for m in mask]


def ref_layers(model: str, flavour: str) -> tuple[dict, dict]:
    m = manifest(model)
    data = np.load(need_shared() / "ref" / model / f"{flavour}.npz")
    return {x["index"]: x for x in m["flavours"][flavour]["layers"]}, data


# ---- region: end to end ------------------------------------------------------------------

def run(model: onnx.ModelProto, feeds: dict, extra: list[str] = ()) -> dict[str, np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in extra:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = session(m.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


@pytest.fixture(scope="module")
def region_case(request, reference_weights):
    model, flavour = request.param
    m = manifest(model)
    darknet = need_shared()
    conv = convert_darknet(darknet / m["cfg_run"], reference_weights(model),
                           bn_eps=FLAVOUR[flavour], head="boxes")
    x = np.fromfile(darknet / "ref" / m["input"]["file"], "<f4").reshape(1, *m["input"]["shape"])
    region = conv.plan.layers[-1]
    outs = run(conv.model, {"images": x}, [conv.layer_outputs[region.index]])
    return model, flavour, m, conv, outs, outs[conv.layer_outputs[region.index]]


AGREEMENT: dict[str, tuple[float, float]] = {}


@pytest.mark.parametrize("region_case", REGION_CASES, indirect=True)
def test_region_boxes_match_numpy_decode_of_darknet(region_case):
    model, flavour, m, conv, outs, head = region_case
    layers, data = ref_layers(model, flavour)
    region = conv.plan.layers[-1]
    info = layers[region.index]
    _c, gh, gw = info["shape"]
    buf = data[f"layer{region.index:02d}_full"]
    decode = decode_pj_region if flavour == "pj" else decode_ab_region
    boxes, scores = decode(buf, region.num, region.classes, region.anchors, gh, gw)
    n = region.num * gh * gw
    assert outs["boxes"].shape == (1, n, 4) and outs["scores"].shape == (1, n, region.classes)
    # What the head itself is allowed to differ from darknet (the manifest's tolerance), carried
    # through the decode: centres move by eps/W, sizes by a factor exp(eps), scores by ~2 eps.
    eps = m["tolerance"][flavour] * float(np.abs(buf).max())
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    box_bound = eps / min(gh, gw) + wh / 2 * np.expm1(eps) + 1e-6
    box_err = np.abs(outs["boxes"][0] - boxes)
    score_err = np.abs(outs["scores"][0] - scores)
    AGREEMENT[f"{model}-{flavour}"] = (float(box_err.max()), float(score_err.max()))
    assert (box_err <= box_bound).all(), float((box_err - box_bound).max())
    assert score_err.max() <= 2.5 * eps + 1e-6
    # And the decode alone (our head tensor through numpy vs through ONNX): float noise.
    own_b, own_s = decode_pj_region(head, region.num, region.classes, region.anchors, gh, gw)
    np.testing.assert_allclose(outs["boxes"][0], own_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs["scores"][0], own_s, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("region_case", REGION_CASES[:1], indirect=True)
def test_region_boxes_metadata(region_case):
    _, _, _, conv, _, _ = region_case
    meta = {p.key: p.value for p in conv.model.metadata_props}
    assert meta["darknet.head"] == "boxes"
    assert meta["darknet.outputs"] == (
        "boxes [1,845,4] (x1,y1,x2,y2) as fractions of the input width/height; scores "
        "[1,845,80] objectness*class probability; boxes ordered by head, anchor, row, column")
    assert meta["darknet.heads"] == (
        "layer 15 region 13x13 anchors (grid cells) 0.57273x0.677385,1.87446x2.06253,"
        "3.33843x5.47434,7.88282x3.52778,9.77052x9.16828")
    onnx.checker.check_model(conv.model, full_check=True)
    assert [o.name for o in conv.model.graph.output] == ["boxes", "scores"]


# ---- yolo: the decode subgraph alone, fed darknet's own [yolo] outputs ---------------------

def yolo_decode_model(model: str, flavour: str, nms: Nms | None = None):
    """A model whose inputs are the [yolo] buffers, decoded by onnxfold's heads code."""
    m = manifest(model)
    layers, _ = ref_layers(model, flavour)
    _net_c, net_h, net_w = m["input"]["shape"]
    fakes = [Layer(sec, [sec.index - 1], Shape(*layers[sec.index]["shape"]))
             for sec in yolo_sections(model)]
    dec = Decode(nms)
    dec.describe(fakes, net_w, net_h)
    g = Graph()
    names = {x.index: f"yolo{x.index}" for x in fakes}
    outputs = dec.emit(g, names)
    inputs = [helper.make_tensor_value_info(names[x.index], TensorProto.FLOAT,
                                            [1, x.out.c, x.out.h, x.out.w]) for x in fakes]
    graph = helper.make_graph(g.nodes, "decode", inputs, outputs, initializer=g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx_model.ir_version = 7
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model, fakes, dec, (net_w, net_h)


@pytest.mark.parametrize("case", YOLO_CASES)
def test_yolo_decode_of_darknet_heads_matches_numpy(case):
    model, flavour = case
    onnx_model, fakes, dec, (net_w, net_h) = yolo_decode_model(model, flavour)
    _, data = ref_layers(model, flavour)
    feeds = {f"yolo{x.index}": data[f"layer{x.index:02d}_full"].reshape(1, x.out.c, x.out.h,
                                                                      x.out.w)
             for x in fakes}
    outs = run(onnx_model, feeds)
    boxes, scores = [], []
    for sec, x in zip(yolo_sections(model), fakes):
        classes = int(sec.raw("classes"))
        b, s = decode_yolo(data[f"layer{x.index:02d}_full"], yolo_anchors(sec), classes,
                           x.out.h, x.out.w, net_w, net_h)
        boxes.append(b)
        scores.append(s)
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    assert outs["boxes"].shape == (1, len(boxes), 4)
    box_err = float(np.abs(outs["boxes"][0] - boxes).max())
    score_err = float(np.abs(outs["scores"][0] - scores).max())
    AGREEMENT[f"{model}-{flavour} (decode only)"] = (box_err, score_err)
    np.testing.assert_allclose(outs["boxes"][0], boxes, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs["scores"][0], scores, rtol=1e-5, atol=1e-7)
    scale = [float(s.raw("scale_x_y") or 1) for s in yolo_sections(model)]
    assert [h.scale_x_y for h in dec.heads] == scale


@pytest.mark.parametrize("model", ["yolov4-tiny", pytest.param("yolov4", marks=pytest.mark.slow)])
def test_yolo_scale_x_y_is_in_the_buffer_we_decode(model):
    """ab's [yolo] output is logistic(conv)*s - (s-1)/2 on x, y: decoding the conv before it
    with scale_x_y from the cfg gives the boxes the decode subgraph gives from the buffer."""
    onnx_model, fakes, _, (net_w, net_h) = yolo_decode_model(model, "ab")
    _layers, data = ref_layers(model, "ab")
    outs = run(onnx_model, {f"yolo{x.index}": data[f"layer{x.index:02d}_full"].reshape(
        1, x.out.c, x.out.h, x.out.w) for x in fakes})
    boxes = []
    tol = manifest(model)["tolerance"]["ab"]
    for sec, x in zip(yolo_sections(model), fakes):
        s = float(sec.raw("scale_x_y"))
        assert s > 1
        classes = int(sec.raw("classes"))
        conv = data[f"layer{x.index - 1:02d}_full"].astype(np.float64)
        conv = conv.reshape(-1, 5 + classes, x.out.h, x.out.w)
        buf = logistic(conv)
        buf[:, 2:4] = conv[:, 2:4]
        buf[:, :2] = buf[:, :2] * s - 0.5 * (s - 1)
        ref = data[f"layer{x.index:02d}_full"].reshape(buf.shape)
        assert np.abs(buf - ref).max() <= tol * np.abs(ref).max()
        boxes.append(decode_yolo(buf, yolo_anchors(sec), classes, x.out.h, x.out.w, net_w,
                                 net_h)[0])
    np.testing.assert_allclose(outs["boxes"][0], np.concatenate(boxes), atol=1e-4)


@pytest.mark.parametrize("case", YOLO_CASES)
def test_yolo_boxes_end_to_end(case, reference_weights):
    """Every [yolo] reference network in each flavour: convert with boxes, compare with a numpy
    decode of darknet's own [yolo] buffers."""
    model, flavour = case
    darknet = need_shared()
    m = manifest(model)
    conv = convert_darknet(darknet / m["cfg_run"], reference_weights(model),
                           bn_eps=FLAVOUR[flavour], head="boxes")
    x = np.fromfile(darknet / "ref" / m["input"]["file"], "<f4").reshape(1, *m["input"]["shape"])
    outs = run(conv.model, {"images": x})
    layers, data = ref_layers(model, flavour)
    _net_c, net_h, net_w = m["input"]["shape"]
    boxes, scores, bounds = [], [], []
    eps_rel = m["tolerance"][flavour]
    for sec in yolo_sections(model):
        _c, gh, gw = layers[sec.index]["shape"]
        buf = data[f"layer{sec.index:02d}_full"]
        b, s = decode_yolo(buf, yolo_anchors(sec), int(sec.raw("classes")), gh, gw, net_w,
                           net_h)
        eps = eps_rel * float(np.abs(buf).max())
        wh = np.concatenate([b[:, 2:] - b[:, :2]] * 2, axis=1)
        bounds.append(eps / min(gh, gw) + wh / 2 * np.expm1(eps) + 1e-6)
        boxes.append(b)
        scores.append(s)
    box_err = np.abs(outs["boxes"][0] - np.concatenate(boxes))
    score_err = np.abs(outs["scores"][0] - np.concatenate(scores))
    AGREEMENT[f"{model}-{flavour}"] = (float(box_err.max()), float(score_err.max()))
    assert (box_err <= np.concatenate(bounds)).all()
    assert score_err.max() <= 2.5 * eps_rel * max(np.abs(data[f"layer{s.index:02d}_full"]).max()
                                                  for s in yolo_sections(model)) + 1e-6


# ---- NMS ---------------------------------------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a with each row of b, corners (x1, y1, x2, y2)."""
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def numpy_nms(boxes, scores, score_thresh, iou_thresh, max_per_class=None) -> set:
    """darknet's do_nms_sort per class: {(class, box index)} kept."""
    kept = set()
    boxes = boxes.astype(np.float64)
    for c in range(scores.shape[1]):
        s = scores[:, c]
        order = [i for i in np.argsort(-s, kind="stable") if s[i] > score_thresh]
        alive = list(order)
        chosen = []
        while alive and (max_per_class is None or len(chosen) < max_per_class):
            i = alive.pop(0)
            chosen.append(i)
            if alive:
                over = iou(boxes[i], boxes[alive]) > iou_thresh
                alive = [j for j, o in zip(alive, over) if not o]
        kept |= {(c, i) for i in chosen}
    return kept


def as_pairs(det: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> set:
    """detections rows -> {(class, box index)}, finding each row's box by its values."""
    pairs = set()
    for row in det:
        c = int(row[1])
        assert row[0] == 0
        (i,) = np.flatnonzero((boxes == row[3:]).all(axis=1) & (scores[:, c] == row[2]))[:1]
        pairs.add((c, int(i)))
    return pairs


def nms_model(n: int, classes: int, nms: Nms) -> onnx.ModelProto:
    from onnxfold.darknet.heads import nms as nms_code

    g = Graph()
    out = nms_code.select(g, "b", "s", nms, n)
    graph = helper.make_graph(
        g.nodes, "nms",
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, n, 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, n, classes])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["K", 7])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("nms", [Nms(), Nms(0.1, 0.3), Nms(0.5, 0.6, 2), Nms(0.0, 0.0, 1)],
                         ids=["default", "loose", "max2", "max1"])
def test_nms_matches_numpy_greedy_per_class(seed, nms):
    rng = np.random.default_rng(seed)
    n, classes = 300, 4
    centre = rng.uniform(0.2, 0.8, (12, 2))[rng.integers(0, 12, n)] + rng.normal(0, .02, (n, 2))
    size = rng.uniform(0.05, 0.3, (n, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, (n, classes)).astype(np.float32) ** 2
    (det,) = run(nms_model(n, classes, nms), {"b": boxes[None], "s": scores[None]}).values()
    assert det.shape[1] == 7
    assert (np.diff(det[:, 2]) <= 0).all()  # sorted by score
    want = numpy_nms(boxes, scores, nms.score_thresh, nms.iou_thresh, nms.max_per_class)
    assert len(det) == len(want)
    assert as_pairs(det, boxes, scores) == want


@pytest.mark.parametrize("region_case", [REGION_CASES[2]], indirect=True)
def test_nms_end_to_end_on_decoded_darknet_boxes(region_case, reference_weights):
    """yolov2-tiny-voc (pj): --nms picks what numpy's greedy per-class NMS picks from the
    same model's --head boxes output."""
    model, flavour, m, _conv, outs, _ = region_case
    darknet = need_shared()
    x = np.fromfile(darknet / "ref" / m["input"]["file"], "<f4").reshape(1, *m["input"]["shape"])
    boxes, scores = outs["boxes"][0], outs["scores"][0]
    thresh = float(np.quantile(scores.max(axis=1), 0.9))  # ~85 boxes above it
    nms = Nms(thresh, 0.45)
    with_nms = convert_darknet(darknet / m["cfg_run"], reference_weights(model),
                               bn_eps=FLAVOUR[flavour], head="boxes", nms=nms)
    assert [o.name for o in with_nms.model.graph.output] == ["detections"]
    (det,) = run(with_nms.model, {"images": x}).values()
    want = numpy_nms(boxes, scores, thresh, 0.45)
    assert 5 < len(want) < (scores > thresh).sum()  # something suppressed, something kept
    assert as_pairs(det, boxes, scores) == want
    meta = {p.key: p.value for p in with_nms.model.metadata_props}
    assert meta["darknet.nms"] == (f"per class, score > {thresh:g}, IoU > 0.45 suppressed, no "
                                   "limit per class")


def test_report_agreement(capsys):
    """Prints the measured max abs errors (run with -s to see them)."""
    with capsys.disabled():
        for key, (b, s) in sorted(AGREEMENT.items()):
            print(f"\n  {key}: boxes max abs err {b:.3g}, scores {s:.3g}", end="")
