"""Start-up hygiene: what `onnxfold` imports when it does not check (in a fresh process each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("onnxruntime", "tensorflow", "torch")
_PROBE = """
import json, sys
from onnxfold.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def _imported(*argv: object, cwd: Path | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, *map(str, argv)], capture_output=True,
                         text=True, check=False, cwd=cwd, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["fuse", "--help"], ["check", "--help"],
                                  ["convert", "--help"]])
def test_help_imports_no_runtime(argv):
    got = _imported(*argv)
    assert got == {"code": 0, "heavy": []}


def test_fuse_no_check_imports_no_runtime(tmp_path, bundled_model):
    src = tmp_path / "m.onnx"
    src.write_bytes(bundled_model.SerializeToString())
    got = _imported("fuse", "--no-check", "-q", src, "-o", tmp_path / "f.onnx")
    assert got == {"code": 0, "heavy": []}
    assert (tmp_path / "f.onnx").exists()


def test_convert_without_fold_imports_no_runtime(tmp_path):
    """With a .weights file (synthetic weights are calibrated by running layers in ORT)."""
    from tests.darknet.helpers import write_weights

    cfg = tmp_path / "t.cfg"
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=3\n\n[convolutional]\n"
                   "batch_normalize=1\nfilters=4\nsize=1\nstride=1\nactivation=leaky\n")
    weights = write_weights(tmp_path / "t.weights", 4 * 4 + 4 * 3)  # bias, BN x3, kernel
    got = _imported("convert", cfg, weights, "--head", "raw", "-q", "-o", tmp_path / "t.onnx",
                    cwd=Path(__file__).resolve().parent.parent)
    assert got == {"code": 0, "heavy": []}
    assert (tmp_path / "t.onnx").exists()


def test_fuse_with_check_imports_onnxruntime(tmp_path, bundled_model):
    """The other side: the check does run onnxruntime (the probe above would see it)."""
    src = tmp_path / "m.onnx"
    src.write_bytes(bundled_model.SerializeToString())
    got = _imported("fuse", "-q", src, "-o", tmp_path / "f.onnx")
    assert got["code"] == 0 and "onnxruntime" in got["heavy"]
