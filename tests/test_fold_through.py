"""Folds through nodes that keep the channel axis: Identity, Squeeze/Unsqueeze off axes 0 and 1."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

import onnxfold
from tests.builders import (
    assert_refused,
    axes_const,
    between,
    conv_bn_model,
    max_rel_error,
    ops,
)

FP32_TOL = 1e-5  # a correct fold reorders roundings only (measured <= 3e-7); see test_fold_conv


def folds_through(m: onnx.ModelProto, kept: list[str]):
    result = onnxfold.fuse(m)
    assert [r.reason for r in result.refused] == []
    assert len(result.folded) == 1 and ops(result.model)["BatchNormalization"] == 0
    assert [n.op_type for n in result.model.graph.node if n.op_type != "Relu"] == ["Conv", *kept]
    last = [n for n in result.model.graph.node if n.op_type == kept[-1]][-1]
    assert last.output[0] == "bn_out"  # the last pass-through node took the BN's output name
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= FP32_TOL
    return result


def test_identity():
    m = between(conv_bn_model(), helper.make_node("Identity", ["conv_out"], ["mid"], name="id"))
    folds_through(m, ["Identity"])


def test_two_identities():
    m = between(conv_bn_model(), helper.make_node("Identity", ["conv_out"], ["i1"]),
                helper.make_node("Identity", ["i1"], ["mid"]))
    folds_through(m, ["Identity", "Identity"])


@pytest.mark.parametrize("axes", [[2], [-2]], ids=["axis2", "axis-2"])
def test_conv1d_unsqueeze_then_bn(axes):
    """PaddleOCR-style: Conv1D (N, C, L) -> Unsqueeze -> (N, C, 1, L) -> BN."""
    m = conv_bn_model(dims=1)
    unsq = helper.make_node("Unsqueeze", ["conv_out", axes_const(m, "ax", axes)], ["mid"],
                            name="unsq")
    folds_through(between(m, unsq, out_rank=4), ["Unsqueeze"])


def test_unsqueeze_attribute_opset11():
    m = conv_bn_model(dims=1, opset=11)
    m = between(m, helper.make_node("Unsqueeze", ["conv_out"], ["mid"], axes=[3]), out_rank=4)
    folds_through(m, ["Unsqueeze"])


def test_squeeze_axis3():
    m = conv_bn_model()
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 1  # (1, 4, 9, 1), pads keep W=1
    sq = helper.make_node("Squeeze", ["conv_out", axes_const(m, "ax", [-1])], ["mid"])
    m = between(m, sq, out_rank=3)
    folds_through(m, ["Squeeze"])


def test_unsqueeze_moving_channels_refused():
    m = conv_bn_model(dims=1)
    unsq = helper.make_node("Unsqueeze", ["conv_out", axes_const(m, "ax", [1])], ["mid"],
                            name="unsq")
    m = between(m, unsq, out_rank=4)
    assert_refused(m, "channel-axis", "Unsqueeze 'unsq' with axes [1] moves the channel axis")


def test_squeeze_without_axes_refused():
    m = between(conv_bn_model(), helper.make_node("Squeeze", ["conv_out"], ["mid"], name="sq"))
    assert_refused(m, "channel-axis", "Squeeze 'sq' has no axes: it may drop the batch axis")


def test_computed_axes_refused():
    m = conv_bn_model(dims=1)
    m.graph.input.append(helper.make_tensor_value_info("ax", TensorProto.INT64, [1]))
    m = between(m, helper.make_node("Unsqueeze", ["conv_out", "ax"], ["mid"], name="unsq"),
                out_rank=4)
    assert_refused(m, "channel-axis", "the axes of Unsqueeze 'unsq': 'ax' is a graph input")


def test_identity_output_read_elsewhere_refused():
    m = between(conv_bn_model(), helper.make_node("Identity", ["conv_out"], ["mid"], name="id"))
    m.graph.output.append(helper.make_tensor_value_info("mid", TensorProto.FLOAT, list("abcd")))
    assert_refused(m, "shared-output", "the output 'mid' of Identity 'id'", "graph output")


def test_conv_output_read_beside_identity_refused():
    m = between(conv_bn_model(), helper.make_node("Identity", ["conv_out"], ["mid"], name="id"))
    m.graph.node.append(helper.make_node("Sigmoid", ["conv_out"], ["s"], name="sig"))
    m.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, list("abcd")))
    assert_refused(m, "shared-output", "the output 'conv_out' of Conv 'conv'", "Sigmoid 'sig'")
