"""Read a darknet .weights file: a 16- or 20-byte header, then float32 arrays in cfg order.

The size the cfg implies is checked against the file's size before anything large is read:
darknet silently runs with a short or long file, we refuse both.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxfold.darknet.cfg import not_a_file
from onnxfold.errors import OnnxfoldError

# (layer index, layer kind, [(array name, float count), ...]) in file order
Layout = list[tuple[int, str, list[tuple[str, int]]]]


@dataclass
class Weights:
    major: int
    minor: int
    revision: int
    seen: int
    header_bytes: int
    arrays: dict[int, dict[str, np.ndarray]]  # layer index -> name -> float32 array
    sha256: str
    transposed: bool = False  # [connected] weights were stored inputs x outputs


MAX_VERSION = 99_999  # darknet computes major*10+minor in a C int; larger numbers are no version


def header_size(major: int, minor: int, flavour: str = "darknet") -> int:
    """20 bytes (64-bit `seen`) from version 0.2 on, else 16. The original darknet (flavour
    "darknet") also reads 16 when major or minor is 1000 or more; the AlexeyAB fork does not."""
    if flavour == "darknet" and (major >= 1000 or minor >= 1000):
        return 16
    return 20 if major * 10 + minor >= 2 else 16


def read_weights(path: str | os.PathLike[str], layout: Layout,
                 flavour: str = "darknet") -> Weights:
    """Read exactly the floats `layout` asks for, or raise OnnxfoldError saying what differs.
    `flavour` (the --bn-eps value) picks the fork whose header rule applies."""
    p = Path(path)
    expected = "a darknet .weights file"
    if not p.is_file():
        raise OnnxfoldError(p, expected, not_a_file(p))
    size = p.stat().st_size
    if size < 16:
        raise OnnxfoldError(p, f"{expected} (a header of 16 or 20 bytes)", f"{size} bytes")
    with open(p, "rb") as f:
        head = f.read(20)
    major, minor, revision = (int(v) for v in np.frombuffer(head[:12], "<i4"))
    if not (0 <= major <= MAX_VERSION and 0 <= minor <= MAX_VERSION):
        raise OnnxfoldError(p, f"{expected} whose header starts with version numbers in "
                            f"0..{MAX_VERSION}", f"major={major}, minor={minor}")
    hdr = header_size(major, minor, flavour)
    transposed = major > 1000 or minor > 1000
    if size < hdr:
        raise OnnxfoldError(p, f"a {hdr}-byte header (version {major}.{minor})", f"{size} bytes")
    seen = int(np.frombuffer(head[12:hdr], "<u8" if hdr == 20 else "<u4")[0])
    want = sum(n for _, _, blobs in layout for _, n in blobs)
    have, stray = divmod(size - hdr, 4)
    if have != want or stray:
        found = f"{have} floats" + (f" and {stray} stray bytes" if stray else "")
        if have < want:
            found += f" (the file ends in {_position(layout, have)})"
        raise OnnxfoldError(
            p, f"{want} float32 values after the {hdr}-byte header (version "
            f"{major}.{minor}.{revision}), as the cfg implies: {hdr + 4 * want} bytes in all",
            f"{found}: {size} bytes",
        )
    data = p.read_bytes()  # size checked above: exactly what the cfg implies
    if len(data) != size:
        raise OnnxfoldError(p, f"a file of {size} bytes, as when it was opened", f"{len(data)}")
    flat = np.frombuffer(data, dtype="<f4", count=want, offset=hdr).astype(np.float32, copy=False)
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        raise OnnxfoldError(p, "finite float32 values", f"{flat[bad[0]]} in "
                            f"{_position(layout, int(bad[0]))} ({bad.size} such values)")
    arrays: dict[int, dict[str, np.ndarray]] = {}
    at = 0
    for index, kind, blobs in layout:
        layer = arrays.setdefault(index, {})
        for name, n in blobs:
            layer[name] = flat[at:at + n]
            at += n
        if transposed and kind == "connected":  # darknet's load_connected_weights
            outputs = layer["biases"].size
            layer["weights"] = layer["weights"].reshape(-1, outputs).T.ravel()
    return Weights(major, minor, revision, seen, hdr, arrays, hashlib.sha256(data).hexdigest(),
                   transposed)


def _position(layout: Layout, floats: int) -> str:
    """Which array of which layer the float at offset `floats` would belong to."""
    at = 0
    for index, kind, blobs in layout:
        for name, n in blobs:
            if floats < at + n:
                return f"layer {index} [{kind}] {name} (float {floats - at} of {n})"
            at += n
    return "the end of the last layer"
