"""`onnxfold export --demo`: a static detection page beside the TF.js model.

The page (page/index.html, demo.js, yolo.js) runs `tfjs/` in the browser and decodes the YOLO heads
itself, with the anchors and classes the darknet converter wrote into the model's metadata. It
needs nothing from the network: the TF.js bundles are copied from the pinned npm packages in
js/node_modules, and the sample picture is drawn here from a fixed recipe.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx

from onnxfold.errors import OnnxfoldError
from onnxfold.export.stack import INSTALL_HINT, JS_DIR

PAGE_DIR = Path(__file__).resolve().parent / "page"
# (package, file in its dist/): the UMD bundles the page loads, and the wasm backend's binaries.
BUNDLES = [
    ("tfjs-core", "tf-core.min.js"),
    ("tfjs-converter", "tf-converter.min.js"),
    ("tfjs-backend-cpu", "tf-backend-cpu.min.js"),
    ("tfjs-backend-webgl", "tf-backend-webgl.min.js"),
    ("tfjs-backend-wasm", "tf-backend-wasm.min.js"),
    ("tfjs-backend-wasm", "tfjs-backend-wasm.wasm"),
    ("tfjs-backend-wasm", "tfjs-backend-wasm-simd.wasm"),
    ("tfjs-backend-wasm", "tfjs-backend-wasm-threaded-simd.wasm"),
]
THRESH = 0.25  # the sliders' start: AlexeyAB's detector default
IOU = 0.45  # both forks' NMS threshold
SAMPLE_SIZE = (640, 400)  # width, height: not the network's, so the page letterboxes


def demo_meta(model: onnx.ModelProto, source: str) -> dict:
    """What the page needs to decode the heads, from the darknet converter's metadata_props: one
    [region] output (YOLOv2), or one output per [yolo] layer (YOLOv3/v4) in the graph's order."""
    props = {p.key: p.value for p in model.metadata_props}
    head = props.get("darknet.head")
    if head is None:
        raise OnnxfoldError(source, "a model converted by onnxfold convert from a darknet YOLO cfg "
                            "(--demo reads its anchors and classes from metadata_props)",
                            "no darknet.head in metadata_props")
    if head not in ("darknet", "raw"):
        raise OnnxfoldError(source, "a model converted with --head darknet or --head raw for "
                            "--demo (the page decodes the boxes itself)", f"--head {head}")
    if "darknet.anchors" not in props:
        raise OnnxfoldError(source, "a darknet cfg ending in [region] or with [yolo] layers for "
                            "--demo", "no darknet.anchors in metadata_props")
    outputs = [o.name for o in model.graph.output]
    heads = _yolo_heads(props, outputs, source) if "darknet.masks" in props else \
        _region_heads(props, outputs, source)
    classes = heads[0]["classes"]
    try:
        width, height = int(props["darknet.width"]), int(props["darknet.height"])
    except (KeyError, ValueError) as e:
        raise OnnxfoldError(source, "darknet.width and .height as numbers in metadata_props",
                            f"{type(e).__name__}: {e}") from None
    names = props.get("darknet.names")
    labels = names.split("\n") if names else None
    if labels is not None and len(labels) != classes:
        raise OnnxfoldError(source, f"{classes} labels in darknet.names", f"{len(labels)}")
    cfg = props.get("darknet.cfg", "").split(" ")[0] or Path(source).name
    return {
        "source": f"{cfg} ({props.get('darknet.weights', 'weights unknown')})",
        "head": head, "width": width, "height": height, "classes": classes, "labels": labels,
        "input": model.graph.input[0].name, "thresh": THRESH, "iou": IOU, "heads": heads,
    }


def _region_heads(props: dict[str, str], outputs: list[str], source: str) -> list[dict]:
    if len(outputs) != 1:
        raise OnnxfoldError(source, "one output (the [region] head) for --demo",
                            f"{len(outputs)} outputs")
    try:
        num, classes = int(props["darknet.num"]), int(props["darknet.classes"])
        values = [float(v) for v in props["darknet.anchors"].split(",") if v]
    except (KeyError, ValueError) as e:
        raise OnnxfoldError(source, "darknet.num, .classes and .anchors as numbers in "
                            "metadata_props", f"{type(e).__name__}: {e}") from None
    if not values:
        values = [0.5] * (2 * num)  # darknet's default biases
    if len(values) != 2 * num:
        raise OnnxfoldError(source, f"2*num = {2 * num} anchors in metadata_props",
                            f"{len(values)}")
    return [{"kind": "region", "classes": classes, "output": outputs[0],
             "anchors": [values[k:k + 2] for k in range(0, len(values), 2)]}]


def _yolo_heads(props: dict[str, str], outputs: list[str], source: str) -> list[dict]:
    """darknet.masks, .anchors (every anchor, in input pixels), .classes, .scale_x_y: one entry
    per output (';' or ',' separated, as convert writes them); a head's anchors are its mask's."""
    try:
        masks = [[int(v) for v in m.split(",") if v] for m in props["darknet.masks"].split(";")]
        anchors = [[float(v) for v in a.split(",") if v]
                   for a in props["darknet.anchors"].split(";")]
        classes = [int(v) for v in props["darknet.classes"].split(",")]
        scales = [float(v) for v in props.get("darknet.scale_x_y", "").split(",") if v] or \
            [1.0] * len(masks)
    except (KeyError, ValueError) as e:
        raise OnnxfoldError(source, "darknet.masks, .anchors, .classes and .scale_x_y as numbers "
                            "in metadata_props", f"{type(e).__name__}: {e}") from None
    n = len(outputs)
    for key, got in (("masks", masks), ("anchors", anchors), ("classes", classes),
                     ("scale_x_y", scales)):
        if len(got) != n:
            raise OnnxfoldError(source, f"one darknet.{key} entry per output ({n}) for --demo",
                                f"{len(got)}")
    if len(set(classes)) != 1:
        raise OnnxfoldError(source, "the same classes in every [yolo] head for --demo",
                            ",".join(map(str, classes)))
    heads = []
    for out, mask, values, c, sxy in zip(outputs, masks, anchors, classes, scales):
        bad = [m for m in mask if not 0 <= m < len(values) // 2]
        if bad or not mask or len(values) % 2:
            raise OnnxfoldError(source, "mask indices into the anchor pairs in metadata_props",
                                f"mask {mask} over {len(values)} anchor numbers")
        heads.append({"kind": "yolo", "classes": c, "output": out, "scaleXY": sxy,
                      "anchors": [values[2 * m:2 * m + 2] for m in mask]})
    return heads


def check_bundles() -> None:
    for pkg, name in BUNDLES:
        if not (JS_DIR / "node_modules" / "@tensorflow" / pkg / "dist" / name).is_file():
            raise OnnxfoldError(JS_DIR / "node_modules", f"@tensorflow/{pkg}/dist/{name} for the "
                                f"--demo page (install with: {INSTALL_HINT})", "not installed")


def write(out: Path, meta: dict, tfjs_input: str, tfjs_outputs: dict[str, str]) -> list[str]:
    """Write index.html and demo/ into `out` (the export folder holding tfjs/); return the files.
    tfjs_input: the input's node name in model.json; tfjs_outputs: ONNX output -> node name."""
    check_bundles()
    meta = {**meta, "input": tfjs_input,
            "heads": [{**h, "output": tfjs_outputs[h["output"]]} for h in meta["heads"]]}
    d = out / "demo"
    (d / "tfjs").mkdir(parents=True)
    shutil.copyfile(PAGE_DIR / "index.html", out / "index.html")
    for name in ("demo.js", "yolo.js"):
        shutil.copyfile(PAGE_DIR / name, d / name)
    for pkg, name in BUNDLES:
        shutil.copyfile(JS_DIR / "node_modules" / "@tensorflow" / pkg / "dist" / name,
                        d / "tfjs" / name)
    (d / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    (d / "sample.png").write_bytes(png(sample_picture()))
    return ["index.html", *sorted(p.relative_to(out).as_posix() for p in d.rglob("*")
                                  if p.is_file())]


def sample_picture(size: tuple[int, int] = SAMPLE_SIZE) -> np.ndarray:
    """A fixed synthetic scene (sky, ground, a sun, houses, a tree), HxWx3 uint8: no photo."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    sky = y < 0.6 * h
    t = y / (0.6 * h)
    img[sky] = np.stack([90 + 80 * t, 150 + 60 * t, 235 - 10 * t], -1)[sky]
    ground = ~sky
    stripe = (np.floor(x / 40) + np.floor(y / 40)) % 2
    img[ground] = np.stack([70 + 20 * stripe, 140 + 25 * stripe, 60 + 10 * stripe], -1)[ground]
    sun = (x - 0.82 * w) ** 2 + (y - 0.18 * h) ** 2 < (0.08 * h) ** 2
    img[sun] = (250, 220, 60)

    def box(x0, y0, x1, y1, rgb):
        img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = rgb

    for i, (x0, colour) in enumerate([(0.08, (200, 60, 50)), (0.40, (230, 200, 150)),
                                      (0.62, (120, 120, 200))]):
        top = 0.38 + 0.04 * i
        box(x0, top, x0 + 0.2, 0.75, colour)
        box(x0 + 0.07, 0.62, x0 + 0.12, 0.75, (90, 50, 30))  # a door
        box(x0 + 0.02, top + 0.05, x0 + 0.06, top + 0.12, (240, 240, 255))  # a window
        roof = (y < top * h) & (y > (top - 0.12) * h) & (
            np.abs(x - (x0 + 0.1) * w) < (y - (top - 0.12) * h) * (0.1 * w) / (0.12 * h))
        img[roof] = (110, 40, 40)
    box(0.30, 0.45, 0.33, 0.8, (100, 70, 40))  # a tree: trunk, then crown
    crown = (x - 0.315 * w) ** 2 + (y - 0.40 * h) ** 2 < (0.09 * h) ** 2
    img[crown] = (40, 120, 40)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    """An RGB PNG (8 bits, no filter, no ancillary chunks: browsers apply no colour profile)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
