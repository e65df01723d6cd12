"""Shared by the darknet tests: where ../shared is, small cfgs and weights, running every layer."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxfold.darknet.build import Converted
from onnxfold.parity.run import session

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DARKNET = SHARED / "darknet"


def need_shared() -> Path:
    """../shared/darknet, or skip outside CI (under CI a skip is a failure: fail loudly)."""
    if not DARKNET.is_dir():
        msg = f"the darknet references are not at {DARKNET}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return DARKNET


def manifest(model: str) -> dict:
    """A reference's manifest.json: cfg_run, input, weights, tolerance, layers per flavour."""
    return json.loads((need_shared() / "ref" / model / "manifest.json").read_text())


def write_cfg(path: Path, body: str, net: str = "width=8\nheight=8\nchannels=3") -> Path:
    path.write_text(f"[net]\n{net}\n\n{body}")
    return path


def write_weights(path: Path, floats: np.ndarray | int, minor: int = 2, seed: int = 0) -> Path:
    """A .weights file: header (20 bytes for minor >= 2, else 16), then the floats."""
    if isinstance(floats, int):
        floats = np.random.default_rng(seed).uniform(0.5, 1.5, floats).astype("<f4")
    seen = struct.pack("<Q" if minor >= 2 else "<I", 1234)
    path.write_bytes(struct.pack("<iii", 0, minor, 0) + seen + floats.astype("<f4").tobytes())
    return path


def run_layers(conv: Converted, x: np.ndarray) -> dict[int, np.ndarray]:
    """Every darknet layer's output, running the model in onnxruntime (optimizations off)."""
    model = onnx.ModelProto()
    model.CopyFrom(conv.model)
    have = {o.name for o in model.graph.output}
    for name in sorted(set(conv.layer_outputs.values()) - have):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = session(model.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(names, {"images": x})))
    return {i: outs[name] for i, name in conv.layer_outputs.items()}


def ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
