"""`onnxfold convert` with --head boxes, --nms, --size and --names: outputs, metadata, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfold.darknet import load_plan
from onnxfold.parity.run import session
from tests.clitools import digest
from tests.clitools import run_cli as run
from tests.darknet.helpers import REPO, write_cfg, write_weights
from tests.hostile.tools import subproc

CFG = REPO / "models" / "yolov2-tiny.cfg"
CLASSES_AT = f"classes in {CFG}:128: [region] layer 15, key 'classes'"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """One .weights file for models/yolov2-tiny.cfg (the synthetic weights of seed 3, made at
    416x416), converted at several sizes."""
    from onnxfold.darknet.synth import synthetic_arrays

    p = load_plan(CFG)
    arrays = synthetic_arrays(p, 3)
    floats = np.concatenate([arrays[i][name] for i, _, blobs in p.layout() for name, _ in blobs])
    assert floats.size == p.floats()
    return write_weights(tmp_path_factory.mktemp("w") / "y.weights", floats)


def outputs(path: Path, size: tuple[int, int]) -> dict[str, np.ndarray]:
    w, h = size
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, h, w)).astype(np.float32)
    sess = session(path.read_bytes())
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"images": x})))


@pytest.mark.parametrize("size", [(320, 320), (608, 608), (320, 256)])
def test_size_converts_the_same_weights_for_another_input(capsys, tmp_path, weights, size):
    w, h = size
    out = tmp_path / "y.onnx"
    rc, text, err = run(capsys, "convert", CFG, weights, "-o", out, "--head", "boxes",
                        "--size", f"{w}x{h}")
    assert (rc, err) == (0, "")
    gw, gh = w // 32, h // 32
    n = 5 * gw * gh
    assert (f"input images 1x3x{h}x{w}, outputs boxes 1x{n}x4, scores 1x{n}x80"
            in text.splitlines()[1])
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert (meta["darknet.width"], meta["darknet.height"]) == (str(w), str(h))
    assert meta["darknet.heads"].startswith(f"layer 15 region {gw}x{gh} anchors (grid cells) ")
    o = outputs(out, size)
    boxes = o["boxes"][0]
    assert boxes.shape == (n, 4) and o["scores"].shape == (1, n, 80)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert (centre >= 0).all() and (centre <= 1).all()  # every cell's centre is in the input
    assert centre.min() < 1 / gw and centre.max() > 1 - 1 / gw  # and the grid covers it
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert o["scores"].min() >= 0 and o["scores"].max() <= 1


def test_size_of_the_cfg_gives_the_same_bytes(capsys, tmp_path, weights):
    for name, extra in (("a", []), ("b", ["--size", "416x416"])):
        assert run(capsys, "convert", CFG, weights, "-o", tmp_path / f"{name}.onnx",
                   *extra)[0] == 0
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "b.onnx")


def test_size_with_the_darknet_head(capsys, tmp_path, weights):
    rc, text, _ = run(capsys, "convert", CFG, weights, "-o", tmp_path / "y.onnx", "--size",
                      "608x608")
    assert rc == 0
    assert "input images 1x3x608x608, output 1x425x19x19" in text


def test_names_are_stored_in_metadata(capsys, tmp_path, weights):
    labels = [f"class {k}" for k in range(80)]
    names = tmp_path / "coco.names"
    names.write_text("\n".join(labels) + "\n\n")  # trailing blank lines are not labels
    for head in ("boxes", "darknet", "raw"):
        out = tmp_path / f"{head}.onnx"
        assert run(capsys, "convert", CFG, weights, "-o", out, "--head", head, "--names",
                   names)[0] == 0
        meta = {p.key: p.value for p in onnx.load(out).metadata_props}
        assert meta["darknet.names"].split("\n") == labels


def test_nms_output_and_metadata(capsys, tmp_path, weights):
    out = tmp_path / "y.onnx"
    rc, text, err = run(capsys, "convert", CFG, weights, "-o", out, "--nms", "--score-thresh",
                        "0.01", "--iou-thresh", "0.5", "--max-per-class", "3")
    assert (rc, err) == (0, "")
    assert "head boxes + nms" in text and "outputs detections Kx7" in text
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["darknet.nms"] == ("per class, score > 0.01, IoU > 0.5 suppressed, at most 3 "
                                   "per class")
    assert meta["darknet.outputs"].startswith("detections [K,7] rows (batch, class, score, x1, "
                                              "y1, x2, y2)")
    (det,) = outputs(out, (416, 416)).values()
    assert det.shape[1] == 7
    _, counts = np.unique(det[:, 1], return_counts=True)
    assert len(det) > 0 and counts.max() <= 3 and (det[:, 2] > 0.01).all()


def refusals(d: Path, weights: Path) -> list[tuple[list, str]]:
    short = d / "short.names"
    short.write_text("\n".join(f"c{k}" for k in range(79)) + "\n")
    holey = d / "holey.names"
    holey.write_text("\n".join("" if k == 4 else f"c{k}" for k in range(80)) + "\n")
    latin = d / "latin.names"
    latin.write_bytes(b"caf\xe9\n" * 80)
    backbone = write_cfg(d / "backbone.cfg", "[convolutional]\nfilters=2\nsize=1\n")
    out = d / "out.onnx"
    base = [CFG, weights, "-o", out]
    return [
        ([*base, "--size", "300x300"],
         "--size: expected a width and height that are positive multiples of 32, found 300x300"),
        ([*base, "--size", "320x0"],
         "--size: expected a width and height that are positive multiples of 32, found 320x0"),
        ([*base, "--size", "320"], "--size: expected WIDTHxHEIGHT, e.g. 320x320, found '320'"),
        ([*base, "--size=-320x320"],
         "--size: expected WIDTHxHEIGHT, e.g. 320x320, found '-320x320'"),
        ([*base, "--names", short],
         f"{short}: expected 80 class labels, one per line ({CLASSES_AT}), found 79 lines"),
        ([*base, "--names", d / "none.names"],
         f"{d / 'none.names'}: expected 80 class labels, one per line ({CLASSES_AT}), found "
         "no such file"),
        ([*base, "--names", d],
         f"{d}: expected 80 class labels, one per line ({CLASSES_AT}), found a directory"),
        ([*base, "--names", holey], f"{holey}:5: expected a class label on every line, found "
         "an empty line"),
        ([*base, "--names", latin], f"{latin}: expected 80 class labels, one per line "
         f"({CLASSES_AT}) in UTF-8, found byte 3: invalid continuation byte"),
        ([*base, "--nms", "--head", "raw"],
         "--nms: expected --head boxes (NMS runs on the decoded boxes), found --head raw"),
        ([*base, "--score-thresh", "0.3"],
         "--score-thresh: expected --score-thresh only with --nms, found no --nms"),
        ([*base, "--head", "boxes", "--max-per-class", "2"],
         "--max-per-class: expected --max-per-class only with --nms, found no --nms"),
        ([*base, "--nms", "--iou-thresh", "1.5"],
         "--iou-thresh: expected a number in [0, 1], found 1.5"),
        ([*base, "--nms", "--score-thresh", "nan"],
         "--score-thresh: expected a number in [0, 1], found nan"),
        ([*base, "--nms", "--max-per-class", "0"],
         "--max-per-class: expected an integer >= 1, found 0"),
        ([backbone, "--weights-seed", "0", "-o", out, "--head", "boxes"],
         f"{backbone}: expected a [region] or [yolo] layer for --head boxes, found none (the "
         "last layer is [convolutional])"),
        ([backbone, "--weights-seed", "0", "-o", out, "--head", "raw", "--names", short],
         f"{backbone}:6: [convolutional] layer 0: expected a network with [region]/[yolo] "
         "heads or a classifier output (Cx1x1) for --names, found an output of 2x8x8"),
    ]


def test_bad_head_options_exit_2_with_one_line_and_write_nothing(capsys, tmp_path, weights):
    for argv, message in refusals(tmp_path, weights):
        before = sorted(p.name for p in tmp_path.iterdir())
        rc, out, err = run(capsys, "convert", *argv)
        assert (rc, out, err) == (2, "", f"onnxfold: error: {message}\n"), argv
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unreadable_names_file(tmp_path, weights):
    """In a subprocess without root's power to ignore file modes (CI runs as root)."""
    names = tmp_path / "locked.names"
    names.write_text("a\n")
    names.chmod(0)
    try:
        r = subproc("convert", CFG, weights, "-o", tmp_path / "o.onnx", "--names", names,
                    no_dac=True)
        rc, out, err = r.rc, r.out, r.err
    finally:
        names.chmod(0o600)
    assert (rc, out) == (2, "")
    assert err == (f"onnxfold: error: {names}: expected 80 class labels, one per line "
                   f"({CLASSES_AT}), found a file that cannot be read (Permission denied)\n")
    assert not (tmp_path / "o.onnx").exists()


def test_nms_with_fold_checks_the_boxes_and_scores(capsys, tmp_path, weights):
    """Detections rows swap when two scores move by float noise, so --fold proves the fold on
    boxes and scores (what NMS reads) and writes the model with NMS."""
    out = tmp_path / "y.onnx"
    rc, text, err = run(capsys, "convert", CFG, weights, "-o", out, "--nms", "--score-thresh",
                        "0.01", "--fold")
    assert (rc, err) == (0, "")
    assert "check: PASS" in text
    assert [line.split()[0] for line in text.splitlines() if "PASS" in line][1:] == ["boxes",
                                                                                     "scores"]
    model = onnx.load(out)
    assert [o.name for o in model.graph.output] == ["detections"]
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
