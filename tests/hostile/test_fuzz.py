"""What tools/fuzz found that is not a refusal at load, and the bounded fuzz run CI makes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests.builders import conv_bn_model
from tests.hostile.tools import MEMORY, REPO, Tree, assert_error, inproc


def _save(m: onnx.ModelProto, path) -> object:
    path.write_bytes(m.SerializeToString())
    return path


def test_input_of_undefined_elem_type(capsys, tmp_path):
    """make_feeds raised KeyError (a traceback): now the check says why it cannot run."""
    m = conv_bn_model()
    m.graph.input[0].type.tensor_type.elem_type = 0
    src = _save(m, tmp_path / "m.onnx")
    why = "input 'X' has elem_type 0, which has no numpy dtype"
    run = inproc(capsys, "fuse", src, "-o", tmp_path / "out.onnx")
    assert (run.rc, run.err) == (0, "")
    assert f"check: NOT RUN: {why}" in run.out
    tree = Tree(tmp_path)
    assert_error(inproc(capsys, "check", src, src), src, "a pair of models onnxruntime can run",
                 f"check not run: {why}")
    tree.assert_unchanged()


def test_convtranspose_reading_a_vector_as_its_weight(capsys, tmp_path):
    """ConvTranspose(W, b): its 'weight' is 1-D. The rule raised IndexError (an internal error
    and a logged traceback); it is refused as for Conv."""
    m = conv_bn_model(op="ConvTranspose", cin=6, cout=6)
    conv = m.graph.node[0]
    del conv.input[0]  # now ConvTranspose(W, b)
    m.graph.input[0].name = "unused"
    src = _save(m, tmp_path / "m.onnx")
    run = inproc(capsys, "fuse", src, "--dry-run")
    assert (run.rc, run.err) == (0, "")
    assert "unsupported-shape (1):" in run.out
    assert "the weight 'b' of ConvTranspose 'conv' has shape [6]" in run.out
    assert "internal" not in run.out


def test_signalling_nan_weights_print_no_warning(capsys, tmp_path):
    """numpy printed 'RuntimeWarning: invalid value encountered in cast' and a source line."""
    m = conv_bn_model()
    var = next(t for t in m.graph.initializer if t.name == "bn_var")
    raw = bytearray(var.raw_data)
    raw[0:4] = np.array([0x7FA00000], "<u4").tobytes()  # a signalling NaN
    var.raw_data = bytes(raw)
    src = _save(m, tmp_path / "m.onnx")
    run = inproc(capsys, "fuse", src, "--dry-run")
    assert (run.rc, run.err) == (0, "")
    assert "not-finite (1):" in run.out


@pytest.mark.slow
def test_bounded_fuzz_run():
    """The CI fuzz run: every target, a fixed seed and number of inputs (about 30 s here).
    `python -m tools.fuzz --seconds 600` is the longer run (README, Fuzzing)."""
    p = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", "--examples", "1000", "--seed", "0",
         "--memory", str(MEMORY >> 20)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300,
    )
    print(p.stdout)
    assert p.returncode == 0, p.stderr[-5000:]
    assert "fuzz: 6000 inputs in " in p.stdout


def test_scale_layer_below_opset_7_is_refused(capsys, tmp_path):
    """Found by tools/fuzz: an opset-1 Conv -> Mul -> Add was folded with opset 7's
    broadcasting; the folded model then failed onnx.checker where its input passed, and fuse
    blamed itself ("a bug in onnxfold", exit 1). Before opset 7 the fold is refused."""
    from tests.builders import scale_model

    m = scale_model([("Mul", (6, 1, 1), False)], opset=13)
    m.opset_import[0].version = 1
    src = _save(m, tmp_path / "m.onnx")
    run = inproc(capsys, "fuse", src, "--dry-run")
    assert (run.rc, run.err) == (0, "")
    assert ("Mul 'mul0': the constant 'c0' of shape [6, 1, 1]: before opset 7, Mul broadcasts "
            "only by its legacy broadcast/axis attributes") in run.out
