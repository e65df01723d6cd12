"""BatchNormalization -> Conv / Gemm: folded forward into the layer that reads it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from tests.builders import assert_refused, bn_conv_model, bn_gemm_model, max_rel_error, ops

FP32_TOL = 1e-5  # a correct fold reorders roundings only (measured <= 3e-7); see test_fold_conv


CASES = {
    "2d": {},
    "no-bias": {"bias": False},
    "group2": {"group": 2},
    "depthwise": {"cin": 6, "cout": 6, "group": 6},
    "1x1": {"k": 1},
    "1d": {"dims": 1},
    "3d": {"dims": 3},
    "strides-dilations": {"conv_attrs": {"strides": [2, 2], "dilations": [2, 2]}},
    "explicit-zero-pads": {"conv_attrs": {"pads": [0, 0, 0, 0]}},
    "auto-pad-valid": {"conv_attrs": {"auto_pad": "VALID"}},
}


@pytest.mark.parametrize("kw", CASES.values(), ids=CASES.keys())
def test_fold_bn_into_next_conv(kw):
    m = bn_conv_model(**kw)
    result = onnxfold.fuse(m)
    assert [r.reason for r in result.refused] == []
    assert [f.rule for f in result.folded] == ["BatchNormalization+Conv"]
    assert ops(result.model) == {"Conv": 1}
    conv = result.model.graph.node[0]
    assert conv.input[0] == "X" and conv.output[0] == "Y" and len(conv.input) == 3
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= FP32_TOL


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"auto_pad": "SAME_UPPER"}],
                         ids=["pads", "same-upper"])
def test_refuse_padded_conv(attrs):
    assert_refused(bn_conv_model(conv_attrs=attrs), "padding",
                   "Conv 'conv' pads its input; the zeros it adds after the BatchNormalization")


def test_refuse_bn_output_also_graph_output():
    m = bn_conv_model()
    m.graph.output.append(helper.make_tensor_value_info("bn_out", TensorProto.FLOAT, list("abcd")))
    assert_refused(m, "shared-output",
                   "its output 'bn_out' is needed unfolded: it is a graph output")


def test_refuse_bn_read_by_two_convs():
    m = bn_conv_model()
    m.graph.node.append(helper.make_node("Conv", ["bn_out", "W"], ["Y2"], kernel_shape=[3, 3]))
    m.graph.output.append(helper.make_tensor_value_info("Y2", TensorProto.FLOAT, list("abcd")))
    assert_refused(m, "no-producer", "its input 'X' is a graph input")


def test_refuse_next_conv_weight_not_constant():
    m = bn_conv_model()
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [6, 4, 3, 3]))
    assert_refused(m, "not-constant", "the weight of Conv 'conv': 'W' is an overridable")


def test_backward_fold_preferred():
    """Conv -> BN -> Conv(no pads): the BN folds backward into the first Conv."""
    m = bn_conv_model()
    g = m.graph
    g.node[0].input[0] = "c0"
    g.initializer.append(numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "W0"))
    g.node.insert(0, helper.make_node("Conv", ["X", "W0"], ["c0"], name="conv0",
                                      kernel_shape=[1, 1]))
    result = onnxfold.fuse(m)
    assert [(f.rule, f.into) for f in result.folded] == [("Conv+BatchNormalization",
                                                          "Conv 'conv0'")]
    assert max_rel_error(m, result.model) <= FP32_TOL


GEMM_CASES = {
    "plain": {},
    "transB": {"trans_b": 1},
    "alpha-beta": {"alpha": 0.5, "beta": 2.0},
    "no-C": {"c_shape": None},
    "C-MxN": {"c_shape": (3, 6), "trans_b": 1},
}


@pytest.mark.parametrize("kw", GEMM_CASES.values(), ids=GEMM_CASES.keys())
def test_fold_bn_into_next_gemm(kw):
    m = bn_gemm_model(**kw)
    result = onnxfold.fuse(m)
    assert [r.reason for r in result.refused] == []
    assert [f.rule for f in result.folded] == ["BatchNormalization+Gemm"]
    assert ops(result.model) == {"Gemm": 1}
    gemm = result.model.graph.node[0]
    assert gemm.input[0] == "A" and len(gemm.input) == 3
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= FP32_TOL


def test_refuse_bn_gemm_trans_a():
    """transA=1: the BN's channels become the rows of Y, not columns of B."""
    assert_refused(bn_gemm_model(trans_a=1, k=3), "channel-axis", "has transA=1")
