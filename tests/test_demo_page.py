"""The --demo page's arithmetic (onnxfold/export/page/yolo.js) in Node, against Pillow, onnxfold's
own letterbox (parity/images.py) and a numpy decode of darknet's heads; the page's files and
metadata, without the export stack."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxfold.errors import OnnxfoldError
from onnxfold.export import demo
from onnxfold.parity.images import load_image
from tests.export import yolo_ref

PIL = pytest.importorskip("PIL.Image")
NODE_JS = demo.PAGE_DIR.parent.parent.parent / "tests" / "export" / "yolo_node.js"


def node(req: dict, tmp_path) -> dict:
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("no node on PATH")
    f = tmp_path / "req.json"
    f.write_text(json.dumps(req))
    proc = subprocess.run([exe, str(NODE_JS), str(demo.PAGE_DIR / "yolo.js"), str(f)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def unb64(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype)


def rgba(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], -1)


@pytest.mark.parametrize("size, new", [
    ((97, 61), (41, 26)),  # shrink both ways (Pillow's filter widens: it averages)
    ((40, 30), (103, 77)),  # enlarge
    ((64, 48), (64, 20)),  # only vertical
    ((64, 48), (13, 48)),  # only horizontal
    ((300, 7), (416, 9)),
    ((50, 900), (23, 416)),  # Pillow 13 runs the vertical pass first here
    ((40, 30), (77, 20)),  # and here
    ((64, 48), (64, 48)),  # the same size: a copy
])
def test_resize_is_pillows_bilinear_bit_for_bit(tmp_path, size, new):
    w, h = size
    rgb = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = node({"op": "resize", "rgba": b64(rgba(rgb)), "w": w, "h": h, "nw": new[0],
                "nh": new[1]}, tmp_path)
    want = np.asarray(PIL.fromarray(rgb).resize(new, PIL.BILINEAR))
    np.testing.assert_array_equal(unb64(got["rgb"], np.uint8).reshape(want.shape), want)


@pytest.mark.parametrize("size", [(640, 400), (333, 517), (416, 416), (50, 900)])
def test_letterbox_equals_onnxfold_images_exactly(tmp_path, size):
    rgb = demo.sample_picture(size)
    path = tmp_path / "p.png"
    path.write_bytes(demo.png(rgb))
    want = load_image(path, [1, 3, 416, 416])
    got = node({"op": "letterbox", "rgba": b64(rgba(rgb)), "w": size[0], "h": size[1],
                "width": 416, "height": 416}, tmp_path)
    assert got["shape"] == [1, 3, 416, 416]
    np.testing.assert_array_equal(unb64(got["data"], "<f4").reshape(want.shape), want)


HEADS = [
    ("region", True, [[1.08, 1.19], [3.42, 4.41], [6.63, 11.38]], 4, 1.0),
    ("region", False, [[0.57, 0.68], [1.87, 2.06]], 3, 1.0),
    ("yolo", True, [[10, 14], [23, 27], [37, 58]], 5, 1.0),
    ("yolo", True, [[81, 82], [135, 169]], 2, 1.05),  # AlexeyAB's scale_x_y
]


@pytest.mark.parametrize("kind, raw, anchors, classes, sxy", HEADS)
def test_decode_matches_numpy(tmp_path, kind, raw, anchors, classes, sxy):
    rng = np.random.default_rng(len(anchors) * classes)
    gh, gw = 5, 7
    out = rng.normal(0, 2, (1, len(anchors) * (5 + classes), gh, gw))
    if not raw:  # what the darknet layer leaves: logistic x, y, obj, softmaxed classes
        t = out.reshape(len(anchors), 5 + classes, gh, gw)
        t[:, [0, 1, 4]] = yolo_ref.sigmoid(t[:, [0, 1, 4]])
        e = np.exp(t[:, 5:])
        t[:, 5:] = e / e.sum(1, keepdims=True)
    head = {"kind": kind, "anchors": anchors, "classes": classes, "scaleXY": sxy}
    got = node({"op": "decode", "out": b64(out.astype("<f8")), "gh": gh, "gw": gw,
                "head": head, "netW": 224, "netH": 160, "raw": raw}, tmp_path)
    boxes, scores = yolo_ref.decode(out, kind, anchors, classes, 224, 160, raw, sxy)
    np.testing.assert_allclose(unb64(got["boxes"], "<f8").reshape(-1, 4), boxes, rtol=1e-12)
    np.testing.assert_allclose(unb64(got["scores"], "<f8").reshape(-1, classes), scores,
                               rtol=1e-12)


def test_detect_matches_numpy_nms_and_letterbox_correction(tmp_path):
    rng = np.random.default_rng(7)
    anchors, classes = [[1.08, 1.19], [3.42, 4.41], [6.63, 11.38]], 3
    out = rng.normal(0, 1.5, (1, len(anchors) * (5 + classes), 9, 12))
    meta = {"width": 384, "height": 288, "classes": classes, "head": "raw",
            "heads": [{"kind": "region", "anchors": anchors, "classes": classes}]}
    got = node({"op": "detect", "outputs": [{"data": b64(out.astype("<f8")),
                                             "shape": list(out.shape)}],
                "meta": meta, "w": 500, "h": 701, "thresh": 0.2, "iou": 0.3}, tmp_path)
    boxes, scores = yolo_ref.decode(out, "region", anchors, classes, 384, 288, True)
    want = yolo_ref.detections(boxes, scores, 500, 701, 384, 288, 0.2, 0.3)
    assert len(want) >= 5
    assert [(d["index"], d["class"]) for d in got["detections"]] == \
        [(d["index"], d["class"]) for d in want]
    for g, w in zip(got["detections"], want):
        assert g["score"] == pytest.approx(w["score"], rel=1e-12)
        np.testing.assert_allclose(g["box"], w["box"], rtol=1e-9, atol=1e-9)


def region_model(head: str = "raw", names: str | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 14, 2, 2])
    g = helper.make_graph([helper.make_node("Identity", ["images"], ["output"])], "g", [x], [y])
    m = helper.make_model(g)
    props = {"darknet.head": head, "darknet.num": "2", "darknet.classes": "2",
             "darknet.width": "64", "darknet.height": "64", "darknet.anchors": "1,2,3,4",
             "darknet.cfg": "t.cfg sha256:00", "darknet.weights": "synthetic, seed 3"}
    if names is not None:
        props["darknet.names"] = names
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    return m


def test_meta_from_the_converters_metadata():
    meta = demo.demo_meta(region_model(names="cat\ndog"), "m.onnx")
    assert meta["heads"] == [{"kind": "region", "classes": 2, "output": "output",
                              "anchors": [[1.0, 2.0], [3.0, 4.0]]}]
    assert meta["labels"] == ["cat", "dog"]
    assert (meta["width"], meta["height"], meta["head"]) == (64, 64, "raw")
    assert meta["source"] == "t.cfg (synthetic, seed 3)"
    assert demo.demo_meta(region_model(), "m.onnx")["labels"] is None  # the page says "class N"


@pytest.mark.parametrize("head", ["raw", "darknet"])
def test_meta_of_a_two_yolo_head_model_from_the_converter(head):
    from onnxfold.darknet import convert_darknet

    cfg = demo.PAGE_DIR.parent.parent.parent / "tests" / "export" / "demo-yolov3.cfg"
    m = convert_darknet(cfg, weights_seed=0, head=head, bn_eps="alexeyab").model
    meta = demo.demo_meta(m, "m.onnx")
    assert (meta["width"], meta["height"], meta["classes"], meta["head"]) == (224, 160, 3, head)
    assert meta["heads"] == [  # cfg order, each head's masked anchors in input pixels
        {"kind": "yolo", "classes": 3, "output": "output0", "scaleXY": 1.05,
         "anchors": [[48.0, 56.0], [80.0, 96.0], [140.0, 120.0]]},
        {"kind": "yolo", "classes": 3, "output": "output1", "scaleXY": 1.0,
         "anchors": [[8.0, 10.0], [16.0, 20.0], [28.0, 40.0]]}]


def yolo_model(**props) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    outs = [helper.make_tensor_value_info(f"output{k}", TensorProto.FLOAT, [1, 14, 2, 2])
            for k in range(2)]
    nodes = [helper.make_node("Identity", ["images"], [f"output{k}"]) for k in range(2)]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], outs))
    base = {"darknet.head": "raw", "darknet.width": "64", "darknet.height": "64",
            "darknet.classes": "2,2", "darknet.masks": "2,3;0,1",
            "darknet.anchors": "1,2,3,4,5,6,7,8;1,2,3,4,5,6,7,8", "darknet.scale_x_y": "1.1,1.0"}
    for k, v in {**base, **props}.items():
        m.metadata_props.add(key=k, value=v)
    return m


@pytest.mark.parametrize("props, found", [
    ({"darknet.masks": "2,3"}, "one darknet.masks entry per output \\(2\\) for --demo, found 1"),
    ({"darknet.classes": "2,3"}, "the same classes in every \\[yolo\\] head"),
    ({"darknet.masks": "2,4;0,1"}, "mask indices into the anchor pairs"),
    ({"darknet.scale_x_y": "1.1,x"}, "ValueError"),
])
def test_yolo_meta_refusals(props, found):
    assert demo.demo_meta(yolo_model(), "m.onnx")["heads"][0]["anchors"] == [[5, 6], [7, 8]]
    with pytest.raises(OnnxfoldError, match=found):
        demo.demo_meta(yolo_model(**props), "m.onnx")


@pytest.mark.parametrize("key, value, found", [
    ("darknet.head", None, "no darknet.head in metadata_props"),
    ("darknet.head", "boxes", "--head boxes"),
    ("darknet.anchors", "1,2,3", "found 3"),
    ("darknet.num", "two", "ValueError"),
    ("darknet.names", "cat", "2 labels in darknet.names, found 1"),
])
def test_meta_refusals(key, value, found):
    m = region_model()
    props = {p.key: p.value for p in m.metadata_props}
    props[key] = value
    del m.metadata_props[:]
    for k, v in props.items():
        if v is not None:
            m.metadata_props.add(key=k, value=v)
    with pytest.raises(OnnxfoldError, match=found):
        demo.demo_meta(m, "m.onnx")


def test_sample_picture_is_fixed_and_not_the_networks_size():
    a, b = demo.png(demo.sample_picture()), demo.png(demo.sample_picture())
    assert a == b
    im = PIL.open(__import__("io").BytesIO(a))
    assert im.size == demo.SAMPLE_SIZE and im.mode == "RGB"


def test_page_files_are_byte_identical_across_writes(tmp_path):
    try:
        demo.check_bundles()
    except OnnxfoldError as e:
        pytest.skip(str(e))
    files = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        files.append(demo.write(tmp_path / name, demo.demo_meta(region_model(), "m.onnx"),
                                "images", {"output": "Identity:0"}))
    assert files[0] == files[1]
    assert {"index.html", "demo/demo.js", "demo/yolo.js", "demo/meta.json", "demo/sample.png",
            "demo/tfjs/tf-core.min.js", "demo/tfjs/tfjs-backend-wasm-simd.wasm"} <= set(files[0])
    for f in files[0]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    meta = json.loads((tmp_path / "a" / "demo" / "meta.json").read_text())
    assert meta["input"] == "images" and meta["heads"][0]["output"] == "Identity:0"


@pytest.mark.parametrize("args, message", [
    (["--to", "tf", "--demo"], "onnxfold: error: --demo: expected --to with tfjs (the page runs "
     "the TF.js model), found --to tf\n"),
    (["--to", "tfjs", "--demo", "--nhwc"], "onnxfold: error: --demo: expected the ONNX (NCHW) "
     "interface, which the page feeds, found --nhwc\n"),
    (["--to", "tfjs", "--demo"], "no darknet.head in metadata_props\n"),
])
def test_demo_refusals_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    from onnxfold.cli import main

    m = region_model()
    if args == ["--to", "tfjs", "--demo"]:
        del m.metadata_props[:]  # not from onnxfold convert
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    assert main(["export", str(src), "-o", str(tmp_path / "out"), *args]) == 2
    assert capsys.readouterr().err.endswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
