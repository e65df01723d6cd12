"""`onnxfold export` for real: onnx2tf, tensorflowjs_converter, TensorFlow, LiteRT and TF.js in
Node.js, each artifact checked against onnxruntime.

The export stack lives in its own virtual environment (onnx2tf pins TF, numpy, onnx and
onnxruntime; see README, "onnxfold export"). These tests run the `onnxfold export` command in it:
$ONNXFOLD_EXPORT_PYTHON, else .venv-export/bin/python in the repo, else this Python if it has
onnx2tf. Without any of them they skip (outside CI only: under CI a skip fails).

Darknet models go the user's way: `onnxfold convert` (seeded weights), `onnxfold fuse`, then export
of the folded model, darknet head included.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxfold.export.prepare import VERIFIED_OPS, prepare
from onnxfold.modelio import load_model, model_bytes
from onnxfold.parity.inputs import make_feeds
from onnxfold.parity.run import run, session
from tests.darknet.helpers import need_shared
from tests.export.models import all_ops_model, upsample_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "models" / "tiny-yolov2-backbone.onnx"
FP32, FP16, UINT8 = 1e-5, 2e-3, 2e-2  # the README's tolerances
# cfg -> (flavour, outputs with their NCHW shapes), as `onnxfold convert` emits them. The shared
# cfgs are real darknet networks; tests/export/cfg/ holds small cfgs that between them use every
# layer, activation and key the translator converts (the all-ops models).
CFG = Path(__file__).resolve().parent / "export" / "cfg"
DARKNET_MODELS = {
    "yolov2-tiny-voc": ("darknet", [("output", [1, 125, 13, 13])]),
    "yolov3-tiny": ("darknet", [("output0", [1, 255, 13, 13]), ("output1", [1, 255, 26, 26])]),
    "all-ops-yolo": ("alexeyab", [("output", [1, 21, 32, 32])]),
    "all-ops-classifier": ("alexeyab", [("output", [1, 5, 1, 1])]),
    "all-ops-pj-shortcut": ("darknet", [("output", [1, 5, 1, 1])]),
}
# What the translator emits over all of them (checked below against the converted models).
DARKNET_OPS = {
    "Add", "BatchNormalization", "Clip", "Concat", "Conv", "Div", "Flatten", "Gemm",
    "GlobalAveragePool", "HardSigmoid", "Identity", "LeakyRelu", "MaxPool", "Mul", "Pad", "Relu",
    "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split",
    "Tanh",
}


def _export_python() -> str | None:
    env = os.environ.get("ONNXFOLD_EXPORT_PYTHON")
    if env:
        return env
    venv = REPO / ".venv-export" / "bin" / "python"
    if venv.exists():
        return str(venv)
    if importlib.util.find_spec("onnx2tf") is not None:
        return sys.executable
    return None


@pytest.fixture(scope="module")
def py() -> str:
    p = _export_python()
    if p is None:
        pytest.skip("no export stack: build .venv-export as the README's test command does")
    return p


def export(py: str, model: Path, out: Path, *args: str, env: dict | None = None):
    """Run `onnxfold export` in the export environment: (exit code, stdout, stderr, report)."""
    rep = out.parent / f"{out.name}.report.json"
    proc = subprocess.run(
        [py, "-m", "onnxfold", "export", str(model), "-o", str(out), "--report", str(rep),
         *args], capture_output=True, text=True, cwd=REPO, env=env)
    report = json.loads(rep.read_text()) if rep.exists() else None
    return proc.returncode, proc.stdout, proc.stderr, report


def artifacts(report: dict) -> dict[str, dict]:
    return {a["artifact"]: a for a in report["check"]["artifacts"]}


def worst(artifact: dict) -> float:
    """max abs error / max |onnxruntime| over the artifact's outputs."""
    return max(o["max_abs"] / o["ref_max"] for o in artifact["outputs"])


def save(tmp_path: Path, model: onnx.ModelProto, name: str) -> Path:
    p = tmp_path / name
    onnx.save(model, p)
    return p


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bundled_model_all_targets(py, tmp_path):
    out = tmp_path / "out"
    rc, stdout, stderr, rep = export(py, BUNDLED, out, "--fp16")
    assert rc == 0, stderr
    assert rep["check"]["status"] == "pass"
    arts = artifacts(rep)
    assert sorted(arts) == ["tf", "tfjs-cpu", "tfjs-wasm", "tflite", "tflite-fp16"]
    for name, a in arts.items():
        tol = FP16 if name == "tflite-fp16" else FP32
        assert (a["status"], a["rel_tol"]) == ("pass", tol), name
        assert [o["name"] for o in a["outputs"]] == ["grid"]
        assert [o["shape"] for o in a["outputs"]] == [[1, 125, 13, 13]]  # NCHW kept
        assert 0.0 < worst(a) <= tol, name  # 0.0 would mean ORT was compared with itself
    # The reference is onnxruntime on the converted model.onnx, optimizations off: recompute.
    m = load_model(out / "model.onnx")
    feeds, _ = make_feeds(m, {}, 0)
    ref = run(session(model_bytes(m), "disable"), feeds)["grid"]
    assert arts["tf"]["outputs"][0]["ref_max"] == pytest.approx(float(abs(ref).max()), rel=1e-12)
    # model.onnx is onnxfold's own output: byte for byte what prepare() gives, BN folded.
    assert tree(out)["model.onnx"] == hashlib.sha256(model_bytes(
        prepare(load_model(BUNDLED), str(BUNDLED)).model)).hexdigest()
    assert not [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    assert sorted(tree(out)) == [
        "export.json", "model.onnx", "model_float16.tflite", "model_float32.tflite",
        "saved_model/fingerprint.pb", "saved_model/saved_model.pb",
        "saved_model/variables/variables.data-00000-of-00001",
        "saved_model/variables/variables.index", "tfjs/group1-shard1of1.bin", "tfjs/model.json"]
    assert (out / "export.json").read_text() == (tmp_path / "out.report.json").read_text()
    assert "check: PASS" in stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_all_ops_nchw(py, tmp_path):
    """Every op the darknet translator emits, two outputs (4-D, and 5-D after Reshape)."""
    out = tmp_path / "out"
    rc, _, stderr, rep = export(py, save(tmp_path, all_ops_model(), "all_ops.onnx"), out,
                                "--fp16")
    assert rc == 0, stderr
    assert rep["prepare"]["rewrites"] == ["SpaceToDepth 'reorg'"]
    assert (rep["prepare"]["batchnormalizations"], rep["prepare"]["folded"]) == (3, 2)
    assert rep["check"]["channel_last_outputs"] == []
    arts = artifacts(rep)
    assert sorted(arts) == ["tf", "tfjs-cpu", "tfjs-wasm", "tflite", "tflite-fp16"]
    for name, a in arts.items():
        assert a["status"] == "pass", name
        assert [(o["name"], o["shape"]) for o in a["outputs"]] == [
            ("grid", [1, 10, 16, 16]), ("boxes", [1, 2, 8, 8, 8])]
        assert 0.0 < worst(a) <= (FP16 if name == "tflite-fp16" else FP32), name
    ops = {n["op"] for n in json.loads((out / "tfjs" / "model.json").read_text())
           ["modelTopology"]["node"]}
    assert "SpaceToDepth" not in ops and "DepthToSpace" not in ops


def test_all_ops_nhwc_uint8(py, tmp_path):
    """--nhwc: TF-native layout; --quantize uint8 for TF.js."""
    out = tmp_path / "out"
    rc, _, stderr, rep = export(py, save(tmp_path, all_ops_model(), "all_ops.onnx"), out,
                                "--nhwc", "--quantize", "uint8")
    assert rc == 0, stderr
    assert rep["layout"] == "NHWC"
    assert rep["check"]["inputs"] == {"images": [1, 32, 32, 3]}
    assert rep["check"]["channel_last_outputs"] == ["grid"]  # boxes comes after a Reshape
    arts = artifacts(rep)
    for name in ("tf", "tflite"):
        assert [o["shape"] for o in arts[name]["outputs"]] == [[1, 16, 16, 10], [1, 2, 8, 8, 8]]
        assert 0.0 < worst(arts[name]) <= FP32
    for name in ("tfjs-cpu", "tfjs-wasm"):
        assert (arts[name]["precision"], arts[name]["rel_tol"]) == ("uint8", UINT8)
        assert arts[name]["status"] == "pass"
        assert FP16 < worst(arts[name]) <= UINT8  # really quantized, and still close


def test_upsample_opset9_deterministic_and_force(py, tmp_path):
    src = save(tmp_path, upsample_model(), "up.onnx")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        rc, _, stderr, rep = export(py, src, out)
        assert rc == 0, stderr
        assert all(x["status"] == "pass" for x in rep["check"]["artifacts"])
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    differ = sorted(k for k in ta if ta[k] != tb[k])
    # TF draws a random uuid into the SavedModel's fingerprint at every save; the report names
    # its own output folder. Everything else is byte for byte the same.
    assert differ == ["export.json", "saved_model/fingerprint.pb"]
    ja, jb = (json.loads((d / "export.json").read_text()) for d in (a, b))
    assert ja.pop("output") == str(a) and jb.pop("output") == str(b)
    assert ja == jb
    rc, _, stderr, _ = export(py, src, a)
    assert rc == 2 and "found an existing folder" in stderr
    (a / "extra.txt").write_text("old")
    rc, _, stderr, _ = export(py, src, a, "--force")
    assert rc == 0, stderr
    assert not (a / "extra.txt").exists() and tree(a)["model.onnx"] == ta["model.onnx"]


def test_uint8_beyond_tolerance_fails_and_writes_nothing(py, tmp_path):
    """The bundled model's weights span a wide range (dead channels' rows are 1e-3 of the rest),
    so uint8 weights put TF.js 3% of max off: a real FAIL, exit 1, naming the artifacts."""
    out = tmp_path / "out"
    rc, stdout, stderr, rep = export(py, BUNDLED, out, "--to", "tfjs", "--quantize", "uint8")
    assert rc == 1
    assert stderr.splitlines()[-1] == (
        "onnxfold: error: check failed for tfjs-cpu, tfjs-wasm; nothing written")
    assert "FAIL  worst at [" in stdout
    arts = artifacts(rep)
    assert [a["status"] for a in arts.values()] == ["fail", "fail"]
    assert all(worst(a) > UINT8 for a in arts.values())
    assert rep["output"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.report.json"]


def test_missing_node_says_so(py, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env["PATH"] = str(tmp_path)  # no node here
    rc, _, stderr, _ = export(py, BUNDLED, tmp_path / "out", "--to", "tfjs", env=env)
    assert rc == 2
    assert stderr == ("onnxfold: error: node: expected Node.js >= 18 on PATH, which runs the "
                      "TF.js check, found no node command\n")
    assert not (tmp_path / "out").exists()


def _cfg(name: str) -> Path:
    folder = CFG if name.startswith("all-ops") else need_shared() / "cfg"
    return folder / f"{name}.cfg"


def _onnxfold(*args: object) -> None:
    proc = subprocess.run([sys.executable, "-m", "onnxfold", *map(str, args), "-q"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_all_ops_models_use_every_op_the_translator_emits(tmp_path):
    """The all-ops cfgs (with yolov2's reorg and yolov3-tiny) cover DARKNET_OPS, which export
    verifies: a new op in the translator fails here until it is exported and listed."""
    from onnxfold.darknet import convert_darknet

    ops: set[str] = set()
    for name in (*DARKNET_MODELS, "yolov2"):
        flavour = DARKNET_MODELS.get(name, ("darknet",))[0]
        m = convert_darknet(_cfg(name), weights_seed=0, bn_eps=flavour).model
        ops |= {n.op_type for n in m.graph.node}
    assert ops == DARKNET_OPS
    assert DARKNET_OPS <= VERIFIED_OPS


@pytest.mark.parametrize("name", list(DARKNET_MODELS))
def test_darknet_converted_and_folded(py, tmp_path, name):
    """convert -> fuse -> export, to all three targets; every artifact within fp32 tolerance."""
    flavour, outputs = DARKNET_MODELS[name]
    onnx_path, folded = tmp_path / f"{name}.onnx", tmp_path / f"{name}.folded.onnx"
    _onnxfold("convert", _cfg(name), "--weights-seed", "1", "--bn-eps", flavour, "-o", onnx_path)
    _onnxfold("fuse", onnx_path, "-o", folded)
    m = load_model(folded)
    assert not [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    out = tmp_path / "out"
    rc, stdout, stderr, rep = export(py, folded, out)
    assert rc == 0, stderr
    assert (rep["prepare"]["batchnormalizations"], rep["prepare"]["folded"]) == (0, 0)
    arts = artifacts(rep)
    assert sorted(arts) == ["tf", "tfjs-cpu", "tfjs-wasm", "tflite"]
    for art, a in arts.items():
        assert a["status"] == "pass", art
        assert [(o["name"], o["shape"]) for o in a["outputs"]] == outputs, art
        assert 0.0 < worst(a) <= FP32, art
    assert "check: PASS" in stdout
