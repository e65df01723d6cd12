"""Gemm -> BatchNormalization on a 2-D (N, C) tensor: folds and refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from tests.builders import assert_refused, gemm_bn_model, max_rel_error, ops

# float32: a correct fold reorders roundings only (measured <= 3e-7 here); see test_fold_conv.
FP32_TOL = 1e-5

CASES = {
    "plain": {},
    "transB": {"trans_b": 1},
    "transA-transB": {"trans_a": 1, "trans_b": 1},
    "alpha-beta": {"alpha": 0.5, "beta": 2.5},
    "no-C": {"c_shape": None},
    "no-C-beta": {"c_shape": None, "beta": 3.0},
    "C-scalar": {"c_shape": ()},
    "C-1": {"c_shape": (1,)},
    "C-1xN": {"c_shape": (1, 6)},
    "C-Mx1": {"c_shape": (3, 1), "beta": 0.5},
    "C-MxN": {"c_shape": (3, 6)},
    "C-1x1": {"c_shape": (1, 1)},
    "opset7-C-required": {"opset": 7},
    "opset9": {"opset": 9, "trans_b": 1},
}


@pytest.mark.parametrize("kw", CASES.values(), ids=CASES.keys())
def test_fold_gemm(kw):
    m = gemm_bn_model(**kw)
    result = onnxfold.fuse(m)
    assert [r.reason for r in result.refused] == []
    assert [f.rule for f in result.folded] == ["Gemm+BatchNormalization"]
    assert ops(result.model) == {"Gemm": 1, "Relu": 1}
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= FP32_TOL
    gemm = result.model.graph.node[0]
    assert gemm.output[0] == "bn_out" and len(gemm.input) == 3
    assert {a.name: a.f for a in gemm.attribute if a.name == "beta"} in ({}, {"beta": 1.0})
    if kw.get("alpha") is not None:
        assert next(a.f for a in gemm.attribute if a.name == "alpha") == kw["alpha"]


def test_fold_gemm_float16():
    m = gemm_bn_model(dtype=np.float16, trans_b=1)
    result = onnxfold.fuse(m)
    assert len(result.folded) == 1
    assert {t.data_type for t in result.model.graph.initializer} == {TensorProto.FLOAT16}
    assert max_rel_error(m, result.model) <= 2e-3


def test_shared_c_is_copied():
    m = gemm_bn_model(beta=2.0)
    m.graph.output.append(helper.make_tensor_value_info("C", TensorProto.FLOAT, [6]))
    result = onnxfold.fuse(m)
    assert result.model.graph.node[0].input[2] == "C_folded"
    orig_c = next(t for t in m.graph.initializer if t.name == "C")
    assert next(t for t in result.model.graph.initializer if t.name == "C") == orig_c
    assert max_rel_error(m, result.model) <= FP32_TOL


def test_refuse_gemm_weight_is_input():
    m = gemm_bn_model()
    w = next(t for t in m.graph.initializer if t.name == "Bw")
    m.graph.input.append(helper.make_tensor_value_info("Bw", TensorProto.FLOAT, list(w.dims)))
    assert_refused(m, "not-constant",
                   "the B input of Gemm 'gemm': 'Bw' is an overridable initializer")


def test_refuse_gemm_output_shared():
    m = gemm_bn_model()
    m.graph.output.append(helper.make_tensor_value_info("gemm_out", TensorProto.FLOAT, [3, 6]))
    assert_refused(m, "shared-output", "the output 'gemm_out' of Gemm 'gemm'")


def test_refuse_gemm_bn_channels_on_wrong_axis():
    """A BN sized for Gemm's K (input) axis is not a per-output-column map: refused."""
    m = gemm_bn_model(k=4, n=6)
    for p in ("bn_scale", "bn_B", "bn_mean", "bn_var"):
        t = next(t for t in m.graph.initializer if t.name == p)
        t.CopyFrom(numpy_helper.from_array(np.ones(4, np.float32), p))
    assert_refused(m, "channel-mismatch", "6 output channels")
