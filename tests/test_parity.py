"""The parity checker: it passes what agrees, fails what does not, and never fakes a pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from onnxfold.errors import OnnxfoldError
from onnxfold.modelio import model_bytes
from onnxfold.parity import check_parity, precision
from onnxfold.parity.compare import compare
from onnxfold.parity.inputs import make_feeds, parse_shape
from onnxfold.parity.run import session
from tests.builders import conv_bn_model


def test_compare_identical_and_tolerance():
    a = np.array([[1.0, -4.0], [0.0, 2.0]], np.float32)
    d = compare(a, a.copy(), "y", 1e-4)
    assert d.passed and d.max_abs == 0 and d.ref_max == 4.0 and d.tolerance == pytest.approx(4e-4)
    b = a.copy()
    b[1, 1] += 1e-3  # 2.5e-4 of max|ref|: over 1e-4
    d = compare(a, b, "y", 1e-4)
    assert not d.passed and d.worst_index == (1, 1) and d.worst_ref == 2.0
    assert d.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert d.max_rel == pytest.approx(5e-4, rel=1e-3)


def test_compare_zeros_use_relative_floor():
    a = np.array([0.0, 100.0])
    d = compare(a, np.array([1e-3, 100.0]), "y", 1e-4)
    assert d.max_rel == pytest.approx(1e-3 / (1e-3 * 100.0))  # floor = 1e-3 * max|ref|


def test_compare_nan_and_shape():
    a = np.array([1.0, np.nan, np.inf])
    assert compare(a, a.copy(), "y", 1e-4).passed  # same NaN and inf positions agree
    d = compare(a, np.array([1.0, 2.0, np.inf]), "y", 1e-4)
    assert not d.passed and d.max_abs == np.inf and d.worst_index == (1,)
    d = compare(np.zeros((2, 3)), np.zeros((3, 2)), "y", 1e-4)
    assert not d.passed and "differs from reference [2, 3]" in d.note


def test_reference_runs_with_optimizations_off():
    so = session(model_bytes(conv_bn_model())).get_session_options()
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_folded_model_passes():
    m = conv_bn_model()
    rep = check_parity(m, onnxfold.fuse(m).model)
    assert rep.status == "pass" and rep.reason == ""
    assert rep.precision == "float32" and rep.rel_tol == 1e-4
    assert rep.inputs == {"X": [1, 4, 9, 9]}
    (d,) = rep.outputs
    assert d.name == "Y" and d.max_abs <= 1e-5 * d.ref_max


def _swap_channels(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnxfold.fuse(m).model
    w = next(t for t in out.graph.initializer if t.name == "W")
    a = numpy_helper.to_array(w)[[1, 0, 2, 3, 4, 5]]
    w.CopyFrom(numpy_helper.from_array(a, "W"))
    return out


def test_wrong_fold_fails_with_numbers():
    m = conv_bn_model()
    rep = check_parity(m, _swap_channels(m))
    assert rep.status == "fail"
    (d,) = rep.outputs
    assert not d.passed and d.max_abs > 100 * d.tolerance
    assert d.worst_index[1] in (0, 1)  # the swapped channels


def test_unloadable_original_is_not_run_never_pass():
    m = conv_bn_model()
    m.graph.node[-1].domain = "com.nobody"
    m.opset_import.append(helper.make_opsetid("com.nobody", 1))
    rep = check_parity(m, m)
    assert rep.status == "not-run"
    assert rep.reason.startswith("onnxruntime cannot load the original model")
    assert rep.outputs == []


def test_candidate_that_does_not_run_fails():
    m = conv_bn_model()
    bad = onnxfold.fuse(m).model
    bad.graph.node[0].input[1] = "missing_weight"
    rep = check_parity(m, bad)
    assert rep.status == "fail" and "the rewritten model does not run" in rep.reason


def test_dynamic_dims_noted_and_shape_override():
    m = conv_bn_model()
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = "N"
    feeds, notes = make_feeds(m)
    assert feeds["X"].shape == (1, 4, 9, 9)
    assert notes == ["input 'X' dim 0 ('N') is dynamic: set to 1"]
    feeds, notes = make_feeds(m, {"X": [3, 4, 9, 9]})
    assert feeds["X"].shape == (3, 4, 9, 9) and notes == []
    with pytest.raises(OnnxfoldError, match="a shape for 'X' matching \\?x4x9x9, found 3x5x9x9"):
        make_feeds(m, {"X": [3, 5, 9, 9]})
    with pytest.raises(OnnxfoldError, match="found Z"):
        make_feeds(m, {"Z": [1]})


def test_parse_shape():
    assert parse_shape("images:1x3x416x416") == ("images", [1, 3, 416, 416])
    assert parse_shape("a:b:2x2") == ("a:b", [2, 2])
    for bad in ("images", "images:", ":1x2", "x:1xa", "x:-1"):
        with pytest.raises(OnnxfoldError, match="--shape: expected NAME:D1xD2x"):
            parse_shape(bad)


def test_integer_and_bool_inputs_seeded():
    g = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Where", ["c", "f", "x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [4]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    feeds, _ = make_feeds(m, seed=5)
    assert feeds["i"].dtype == np.int64 and feeds["c"].dtype == np.bool_
    again, _ = make_feeds(m, seed=5)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert check_parity(m, m).status == "pass"


def test_precision_picks_least_precise():
    assert precision(conv_bn_model(dtype=np.float16)) == "float16"
    assert precision(conv_bn_model(dtype=np.float16, param_dtype=np.float32, opset=15)) == "float16"
    assert precision(conv_bn_model(dtype=np.float64)) == "float64"
    m = conv_bn_model(dtype=np.float16)
    rep = check_parity(m, onnxfold.fuse(m).model)
    assert rep.status == "pass" and rep.rel_tol == 2e-2


def test_a_check_from_files_holds_no_model_proto_while_its_sessions_run(tmp_path, monkeypatch):
    """onnxruntime reads the files; the protos read for the signatures are let go first."""
    import sys

    import onnxfold.parity as parity

    m = conv_bn_model(cin=32, cout=64)  # 74 KB of weights
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(model_bytes(m))
    b.write_bytes(model_bytes(onnxfold.fuse(m).model))
    held = []
    real = parity.session

    def spy(model, level="disable"):
        caller = sys._getframe(1).f_locals
        held.append(max(caller[k].ByteSize() for k in ("reference", "candidate")))
        return real(model, level)

    monkeypatch.setattr(parity, "session", spy)
    rep = check_parity(str(a), str(b))
    assert rep.status == "pass"
    assert len(held) == 2 and max(held) < 1000, held
