"""The `onnxfold export --demo` page in a real browser: Debian's Chromium, headless, driven by
playwright-core (tests/export/drive_page.js), the page served from 127.0.0.1.

Two small networks with synthetic weights, each converted with `--head raw` and `--head darknet`
and exported with `--to tfjs --demo`: a YOLOv2 (tests/export/demo-yolo.cfg, one [region] head)
and a yolov3-tiny-like net (tests/export/demo-yolov3.cfg, two [yolo] heads, scale_x_y on one).
The page gets a 300x420 picture (letterboxed into the 224x160 network); its input tensor is
compared with onnxfold's own preprocessing (parity/images.py) and its detections with onnxfold's
own decode: the same cfg and weights converted with `--head boxes` (and `--nms`), run in
onnxruntime on that preprocessing, the letterbox undone here as darknet's correct_region_boxes /
correct_yolo_boxes. Needs the export stack, node with the npm packages (`onnxfold export
--install`) and chromium; without them these tests skip, except under CI.
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
from dataclasses import dataclass
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
DRIVER = REPO / "tests" / "export" / "drive_page.js"
PICTURE = (300, 420)  # width, height: taller than the 224x160 networks, so it is letterboxed
NET_W, NET_H = 224, 160
LABELS = ["house", "tree", "sun & sky"]  # the page escapes them


@dataclass(frozen=True)
class Net:
    cfg: Path
    bn_eps: str
    seed: int
    thresh: float  # the slider: no score within 2e-3 of it on the test picture
    iou: float = 0.45


NETS = {
    # 19 detections at 0.35, from the one [region] head
    "region": Net(REPO / "tests" / "export" / "demo-yolo.cfg", "darknet", 3, 0.35),
    # 19 detections at 0.6, every class, from both [yolo] heads (scale_x_y 1.05 on the first);
    # sigmoid classes put synthetic scores near 0.5, hence the higher threshold
    "yolo": Net(REPO / "tests" / "export" / "demo-yolov3.cfg", "alexeyab", 6, 0.6),
}


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


def convert(net: Net, head: str, **kw):
    from onnxfold.darknet import convert_darknet

    m = convert_darknet(net.cfg, weights_seed=net.seed, head=head, bn_eps=net.bn_eps, **kw).model
    # What `onnxfold convert --names` writes: the page shows them.
    m.metadata_props.add(key="darknet.names", value="\n".join(LABELS))
    return m


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The folder the server serves: one exported folder per (net, head)."""
    return tmp_path_factory.mktemp("site")


@pytest.fixture(scope="module")
def exported(tools, site):
    """exported(net, head) -> the folder name under `site` (exported once per module)."""
    from onnxfold.modelio import model_bytes

    done: dict[tuple[str, str], str] = {}

    def get(net: str, head: str) -> str:
        if (net, head) not in done:
            name = f"{net}-{head}"
            model = site / f"{name}.onnx"
            model.write_bytes(model_bytes(convert(NETS[net], head)))
            code, stdout, stderr, _ = export(tools["python"], model, site / name, "--to", "tfjs",
                                             "--demo")
            assert code == 0, stdout + stderr
            done[net, head] = name
        return done[net, head]

    return get


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
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


def reference(net: Net, picture: Path) -> tuple[list[dict], np.ndarray]:
    """onnxfold's own detections for the picture: the model converted with --head boxes, run in
    onnxruntime on onnxfold's preprocessing (parity/images.py); corners back to picture pixels
    (darknet's correct_region_boxes / correct_yolo_boxes), darknet's per-class NMS. Also the
    scores, and a check that --nms with the same thresholds keeps the same detections."""
    import onnxruntime as ort

    from onnxfold.darknet import Nms
    from onnxfold.modelio import model_bytes

    def run(model, names):
        sess = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
        return [a.astype(np.float64) for a in sess.run(names, {"images": x})]

    x = load_image(picture, [1, 3, NET_H, NET_W])
    w, h = PICTURE
    boxes, scores = (a[0] for a in run(convert(net, "boxes"), ["boxes", "scores"]))
    dets = yolo_ref.detections(boxes, scores, w, h, NET_W, NET_H, net.thresh, net.iou)
    rows, = run(convert(net, "boxes", nms=Nms(net.thresh, net.iou)), ["detections"])
    kept = yolo_ref.to_picture(rows[:, 3:], w, h, NET_W, NET_H)
    got = sorted((int(r[1]), round(r[2], 6), *np.round(b, 3)) for r, b in zip(rows, kept))
    want = sorted((d["class"], round(d["score"], 6), *np.round(d["box"], 3)) for d in dets)
    assert got == want  # onnxfold's NonMaxSuppression keeps what darknet's do_nms_sort keeps
    return dets, scores


def artifact(path: Path) -> None:
    dest = os.environ.get("ONNXFOLD_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(dest) / path.name)


CASES = [  # (net, head, backend); backend None: the best the browser has
    ("region", "raw", None), ("region", "raw", "wasm"), ("region", "raw", "cpu"),
    ("region", "darknet", None), ("yolo", "raw", None), ("yolo", "darknet", None),
    ("yolo", "darknet", "wasm"),
]


@pytest.mark.parametrize("net, head, backend", CASES)
def test_page_detections_match_onnxfold_boxes(tools, exported, server, tmp_path, net, head,
                                              backend):
    folder = exported(net, head)
    n = NETS[net]
    picture = tmp_path / "portrait.png"
    picture.write_bytes(demo.png(demo.sample_picture(PICTURE)))
    shot = tmp_path / f"demo-page-{folder}{'-' + backend if backend else ''}.png"
    force = f"&backend={backend}" if backend else ""
    res = drive(tools, tmp_path, f"{server}/{folder}/index.html?thresh={n.thresh}&iou={n.iou}"
                f"{force}", [{"upload": str(picture), "input": True, "screenshot": str(shot)}])
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

    ref, scores = reference(n, picture)
    assert np.abs(scores - n.thresh).min() > 2e-3  # no detection sits on the threshold
    dets = s["detections"]
    assert len(ref) >= 3 and len({r["class"] for r in ref}) == 3
    assert len(dets) == len(ref), (dets, ref)
    box_diff = score_diff = 0.0
    for g, r in zip(dets, ref):
        assert g["class"] == r["class"] and g["label"] == LABELS[r["class"]]
        score_diff = max(score_diff, abs(g["score"] - r["score"]))
        box_diff = max(box_diff, float(np.abs(np.subtract(g["box"], r["box"])).max()))
    assert score_diff <= 1e-3 and box_diff <= 1.0
    numbers = {"net": net, "head": head, "backend": s["backend"],
               "inference_ms": s["inferenceMs"], "detections": len(dets),
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


def test_page_bad_input_messages(tools, exported, server, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    huge.write_bytes(huge_png(8000, 6000))  # 48 million pixels
    broken = demo.png(demo.sample_picture((64, 48)))[:200]  # a PNG cut short
    ok = tmp_path / "ok.png"
    ok.write_bytes(demo.png(demo.sample_picture((90, 60))))
    res = drive(tools, tmp_path, f"{server}/{exported('region', 'raw')}/index.html", [
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
