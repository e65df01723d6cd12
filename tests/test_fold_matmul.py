"""MatMul(X, const W) [-> Add(const)] -> BatchNormalization: folds for 2-D X, refusals otherwise."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

import onnxfold
from tests.builders import assert_refused, matmul_bn_model, max_rel_error, ops

FP32_TOL = 1e-5  # a correct fold reorders roundings only (measured <= 3e-7); see test_fold_conv


def test_matmul_alone_becomes_gemm():
    m = matmul_bn_model()
    result = onnxfold.fuse(m)
    assert [f.rule for f in result.folded] == ["MatMul+BatchNormalization"]
    assert ops(result.model) == {"Gemm": 1}
    gemm = result.model.graph.node[0]
    assert gemm.name == "mm" and list(gemm.input) == ["X", "W", "Y_bias"]
    assert gemm.output[0] == "Y"
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= FP32_TOL


ADD_CASES = {
    "right": {"add": "right"},
    "left": {"add": "left"},
    "c-1xN": {"add": "right", "c_shape": (1, 6)},
    "c-scalar": {"add": "left", "c_shape": ()},
    "c-MxN": {"add": "right", "c_shape": (3, 6)},
}


@pytest.mark.parametrize("kw", ADD_CASES.values(), ids=ADD_CASES.keys())
def test_matmul_add_folds_into_both(kw):
    m = matmul_bn_model(**kw)
    result = onnxfold.fuse(m)
    assert [r.reason for r in result.refused] == []
    assert ops(result.model) == {"MatMul": 1, "Add": 1}
    assert [n.name for n in result.model.graph.node] == ["mm", "add"]
    assert result.model.graph.node[1].output[0] == "Y"
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= FP32_TOL


@pytest.mark.parametrize("add", [None, "right"])
def test_refuse_3d_matmul(add):
    """(N, T, C): BN's axis 1 is T; folding into W's columns would normalize the wrong axis."""
    assert_refused(matmul_bn_model(rank=3, add=add), "channel-axis",
             "the input 'X' of MatMul 'mm' has rank 3")


def test_refuse_unknown_rank():
    assert_refused(matmul_bn_model(declare_rank=False), "channel-axis", "has an unknown rank")


def test_refuse_matmul_output_shared_behind_add():
    m = matmul_bn_model(add="right")
    m.graph.output.append(helper.make_tensor_value_info("mm_out", TensorProto.FLOAT, [3, 6]))
    assert_refused(m, "shared-output", "the output 'mm_out' of MatMul 'mm'")


def test_refuse_addend_not_per_column():
    assert_refused(matmul_bn_model(add="right", c_shape=(3, 1, 6)), "channel-mismatch",
             "addend of Add 'add' is of shape [3, 1, 6]")


def test_refuse_addend_computed():
    m = matmul_bn_model(add="right")
    m.graph.node.insert(0, helper.make_node("Abs", ["c0"], ["c"], name="abs"))
    next(t for t in m.graph.initializer if t.name == "c").name = "c0"
    assert_refused(m, "not-constant", "'c' is computed by Abs 'abs'")


def test_weight_is_activationassert_refused():
    """MatMul of two activations: no constant weight."""
    m = matmul_bn_model()
    m.graph.node[0].input[1] = "X2"
    m.graph.input.append(helper.make_tensor_value_info("X2", TensorProto.FLOAT, [5, 6]))
    assert_refused(m, "not-constant", "'X2' is a graph input")


def test_conv_add_bn_is_not_a_matmul_fold():
    """An Add fed by no MatMul does not match this rule: reported as having no fold rule."""
    m = matmul_bn_model(add="right")
    m.graph.node[0].op_type = "Mul"
    assert_refused(m, "no-producer", "its input comes from Add 'add', which has no fold rule")
