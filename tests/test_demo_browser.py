"""The `onnxfold export --demo` page in a real browser: Debian's Chromium, headless, driven by
playwright-core (tests/export/drive_page.js), the page served from 127.0.0.1.

A small YOLOv2 (tests/export/demo-yolo.cfg, 224x160, 3 classes, synthetic weights) is converted
with `--head raw` and exported with `--to tfjs --demo` in the export environment. The page gets a
300x420 picture (letterboxed into 224x160), and its input tensor and detections are compared
with onnxfold's own preprocessing (parity/images.py) and with onnxruntime's outputs decoded in
numpy (tests/export/yolo_ref.py). Needs the export stack, node with the npm packages
(`onnxfold export --install`) and chromium; without them these tests skip, except under CI.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from onnxfold.export import demo
from onnxfold.export.stack import JS_DIR
from onnxfold.parity.images import load_image
from tests.export import yolo_ref
from tests.test_export_slow import _export_python, export

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CFG = REPO / "tests" / "export" / "demo-yolo.cfg"
DRIVER = REPO / "tests" / "export" / "drive_page.js"
WEIGHTS_SEED = 3  # 19 detections at these thresholds; no score within 5e-3 of THRESH
THRESH, IOU = 0.35, 0.45
PICTURE = (300, 420)  # width, height: taller than the 224x160 network, so it is letterboxed
NET_W, NET_H = 224, 160
LABELS = ["house", "tree", "sun & sky"]  # the page escapes them
# Where onnxruntime's reference boxes come from: "raw" decodes the last conv in numpy here; once
# `onnxfold convert --head boxes` lands, "boxes" reads the model's own decoded outputs.
REFERENCE_HEAD = "raw"


def _tools() -> dict[str, str]:
    found = {"python": _export_python(), "node": shutil.which("node"),
             "chromium": shutil.which("chromium") or shutil.which("chromium-browser")}
    missing = [k for k, v in found.items() if not v]
    if not (JS_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append("playwright-core (onnxfold export --install)")
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (CI installs them: see .ci/run)")
    return found


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    return _tools()


@pytest.fixture(scope="module")
def page(tools, tmp_path_factory):
    """(the converted model, the exported folder) for the demo cfg."""
    from onnxfold.darknet import convert_darknet
    from onnxfold.modelio import model_bytes

    d = tmp_path_factory.mktemp("demo")
    model = d / "demo-yolo.onnx"
    head = "raw" if REFERENCE_HEAD == "raw" else "darknet"
    m = convert_darknet(CFG, weights_seed=WEIGHTS_SEED, head=head).model
    # What `onnxfold convert --names` writes (on a colleague's branch): the page shows them.
    m.metadata_props.add(key="darknet.names", value="\n".join(LABELS))
    model.write_bytes(model_bytes(m))
    out = d / "out"
    code, stdout, stderr, _ = export(tools["python"], model, out, "--to", "tfjs", "--demo")
    assert code == 0, stdout + stderr
    return model, out


@pytest.fixture(scope="module")
def server(page):
    handler = functools.partial(Quiet, directory=str(page[1]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    httpd.shutdown()
    httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def drive(tools, tmp_path: Path, url: str, steps: list[dict], first: dict | None = None) -> dict:
    req = {"playwright": str(JS_DIR / "node_modules" / "playwright-core"),
           "chromium": tools["chromium"], "url": url, "steps": steps, "first": first or {},
           "result": str(tmp_path / "result.json")}
    (tmp_path / "req.json").write_text(json.dumps(req))
    proc = subprocess.run([tools["node"], str(DRIVER), str(tmp_path / "req.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


def reference(model: Path, picture: Path, w: int, h: int) -> list[dict]:
    """onnxruntime's detections for the picture, preprocessed by onnxfold (parity/images.py)."""
    import onnxruntime as ort

    x = load_image(picture, [1, 3, NET_H, NET_W])
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    if REFERENCE_HEAD == "boxes":
        boxes, scores = (a[0].astype(np.float64) for a in sess.run(["boxes", "scores"],
                                                                    {"images": x}))
    else:
        meta = demo.demo_meta(__import__("onnx").load(str(model)), str(model))
        out = sess.run(None, {"images": x})[0]
        boxes, scores = yolo_ref.decode(out, "region", meta["heads"][0]["anchors"],
                                        meta["classes"], NET_W, NET_H, raw=True)
    return yolo_ref.detections(boxes, scores, w, h, NET_W, NET_H, THRESH, IOU), scores


def artifact(path: Path) -> None:
    dest = os.environ.get("ONNXFOLD_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(dest) / path.name)


@pytest.mark.parametrize("backend", [None, "wasm", "cpu"])  # None: the best the browser has
def test_page_detections_match_onnxruntime(tools, page, server, tmp_path, backend):
    model, _ = page
    picture = tmp_path / "portrait.png"
    picture.write_bytes(demo.png(demo.sample_picture(PICTURE)))
    shot = tmp_path / f"demo-page{'-' + backend if backend else ''}.png"
    force = f"&backend={backend}" if backend else ""
    res = drive(tools, tmp_path, f"{server}?thresh={THRESH}&iou={IOU}{force}",
                [{"upload": str(picture), "input": True, "screenshot": str(shot)}])
    artifact(shot)
    start, s = res["snapshots"]
    assert start["state"] == "ready" and start["picture"]["name"] == "sample.png", start
    assert s["state"] == "ready" and s["message"] == "", s
    assert s["picture"] == {"name": "portrait.png", "width": PICTURE[0], "height": PICTURE[1]}
    assert s["backend"] in ("webgl", "wasm", "cpu") and f"backend {s['backend']}" in s["status"]
    assert backend in (None, s["backend"])
    assert res["consoleErrors"] == []

    # The input tensor: darknet's letterbox as onnxfold computes it, to the bit.
    got = np.frombuffer(base64.b64decode(s["input"]), "<f4").reshape(1, 3, NET_H, NET_W)
    want = load_image(picture, [1, 3, NET_H, NET_W])
    input_diff = float(np.abs(got - want).max())
    assert input_diff <= 1e-6

    ref, scores = reference(model, picture, *PICTURE)
    assert np.abs(scores - THRESH).min() > 2e-3  # no detection sits on the threshold
    dets = s["detections"]
    assert len(ref) >= 3
    assert len(dets) == len(ref), (dets, ref)
    box_diff = score_diff = 0.0
    for g, r in zip(dets, ref):
        assert g["class"] == r["class"] and g["label"] == LABELS[r["class"]]
        score_diff = max(score_diff, abs(g["score"] - r["score"]))
        box_diff = max(box_diff, float(np.abs(np.subtract(g["box"], r["box"])).max()))
    assert score_diff <= 1e-3 and box_diff <= 1.0
    numbers = {"backend": s["backend"], "inference_ms": s["inferenceMs"], "detections": len(dets),
               "input_max_abs_diff": input_diff, "box_max_px_diff": box_diff,
               "score_max_diff": score_diff, "screenshot": str(shot)}
    numbers_file = tmp_path / f"{shot.stem}-numbers.json"
    numbers_file.write_text(json.dumps(numbers, indent=1))
    artifact(numbers_file)
    print(f"\ndemo page in headless chromium: {json.dumps(numbers)}")


def huge_png(w: int, h: int) -> bytes:
    """A w x h grey PNG, compressed row by row (it is mostly the same bytes)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * (3 * w)
    data = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_page_bad_input_messages(tools, server, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    huge.write_bytes(huge_png(8000, 6000))  # 48 million pixels
    broken = demo.png(demo.sample_picture((64, 48)))[:200]  # a PNG cut short
    ok = tmp_path / "ok.png"
    ok.write_bytes(demo.png(demo.sample_picture((90, 60))))
    res = drive(tools, tmp_path, server, [
        {"upload": str(text)},
        {"upload": str(empty)},
        {"upload": str(huge), "screenshot": str(tmp_path / "demo-page-too-large.png")},
        {"drop": "broken.png", "base64": base64.b64encode(broken).decode(), "type": "image/png"},
        {"upload": str(ok)},
    ])
    artifact(tmp_path / "demo-page-too-large.png")
    start, txt, emp, big, brk, good = res["snapshots"]
    assert start["message"] == "" and start["picture"]["name"] == "sample.png"
    assert txt["message"] == ('Cannot use "notes.txt": not a picture this browser can read. '
                              "The picture shown is the previous one.")
    assert emp["message"].startswith('Cannot use "empty.png": the file is empty.')
    assert big["message"].startswith(
        'Cannot use "huge.png": 8000×6000 pixels is too large: this page takes at most 40 '
        "million pixels and 16384 on a side.")
    assert brk["message"] in (  # Chromium reads the cut file's header, or not even that
        'Cannot use "broken.png": its pixels cannot be decoded (a damaged or cut file?). The '
        "picture shown is the previous one.",
        'Cannot use "broken.png": not a picture this browser can read. The picture shown is '
        "the previous one.")
    for s in (txt, emp, big, brk):
        assert s["state"] == "ready" and s["picture"]["name"] == "sample.png"  # still shown
        assert s["status"].startswith("sample.png: 640×400; backend ")
    assert good["message"] == "" and good["picture"] == {"name": "ok.png", "width": 90,
                                                          "height": 60}
