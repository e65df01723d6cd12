"""Every unsafe case is refused: the model comes back unchanged and the reason names the case."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from onnxfold.fold import bn_math
from tests.builders import assert_refused, conv_bn_model, max_rel_error, ops


def refused(m: onnx.ModelProto, code: str, *needles: str) -> onnxfold.Refusal:
    return assert_refused(m, code, "BatchNormalization 'bn'", *needles)


def _init(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def _set(m: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    _init(m, name).CopyFrom(numpy_helper.from_array(value, name))


def test_conv_output_is_graph_output():
    m = conv_bn_model()
    m.graph.output.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None))
    refused(m, "shared-output", "'conv_out'", "it is a graph output")


def test_conv_output_has_other_consumer():
    m = conv_bn_model()
    m.graph.node.append(helper.make_node("Sigmoid", ["conv_out"], ["s"], name="sig"))
    m.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    refused(m, "shared-output", "Sigmoid 'sig' also reads it")


def test_conv_output_read_inside_subgraph():
    m = conv_bn_model()
    branch = helper.make_graph([helper.make_node("Identity", ["conv_out"], ["o"])], "b", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    m.graph.node.append(helper.make_node("If", ["cond"], ["z"], name="if",
                                         then_branch=branch, else_branch=branch))
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    refused(m, "shared-output", "If 'if' also reads it inside a subgraph")


def test_weight_is_graph_input():
    m = conv_bn_model()
    w = _init(m, "W")
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.dims)))
    m.graph.initializer.remove(w)
    refused(m, "not-constant", "the weight of Conv 'conv'", "'W' is a graph input")


@pytest.mark.parametrize("name", ["W", "b", "bn_scale", "bn_B", "bn_mean", "bn_var"])
def test_overridable_initializer(name):
    """IR >= 4: an initializer also listed as a graph input may be fed at run time."""
    m = conv_bn_model()
    t = _init(m, name)
    m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(t.dims)))
    refused(m, "not-constant", f"'{name}' is an overridable initializer")


def test_bias_computed():
    m = conv_bn_model()
    m.graph.node.insert(0, helper.make_node("Abs", ["b_raw"], ["b"], name="absb"))
    _init(m, "b").name = "b_raw"
    refused(m, "not-constant", "the bias of Conv 'conv'", "computed by Abs 'absb'")


def test_qdq_weight_refused():
    """A QDQ model's weight is DequantizeLinear(int8): computed at run time, not a constant."""
    m = conv_bn_model()
    w = numpy_helper.to_array(_init(m, "W"))
    scale = np.float32(np.abs(w).max() / 127)
    q = np.round(w / scale).astype(np.int8)
    m.graph.initializer.remove(_init(m, "W"))
    m.graph.initializer.extend([numpy_helper.from_array(q, "W_q"),
                                numpy_helper.from_array(scale, "W_scale")])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["W_q", "W_scale"], ["W"],
                                            name="dq_w"))
    onnx.checker.check_model(m, full_check=True)
    r = refused(m, "not-constant")
    assert r.reason == ("BatchNormalization 'bn': the weight of Conv 'conv': 'W' is computed by "
                        "DequantizeLinear 'dq_w'")


def test_bias_computed_from_constants_folds():
    """Identity/Neg/... of constants is a constant: folded, and the dead chain removed."""
    m = conv_bn_model()
    m.graph.node.insert(0, helper.make_node("Neg", ["b_raw"], ["b"], name="negb"))
    _init(m, "b").name = "b_raw"
    result = onnxfold.fuse(m)
    assert len(result.folded) == 1
    assert ops(result.model) == {"Conv": 1, "Relu": 1}
    assert "b_raw" not in {t.name for t in result.model.graph.initializer}
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= 1e-5


def test_bn_param_computed():
    m = conv_bn_model()
    m.graph.node.insert(0, helper.make_node("Abs", ["var_raw"], ["bn_var"], name="abs"))
    _init(m, "bn_var").name = "var_raw"
    refused(m, "not-constant", "var 'bn_var' is computed by Abs 'abs'")


def test_training_mode_attribute():
    m = conv_bn_model(opset=14, bn_attrs={"training_mode": 1})
    refused(m, "training-mode", "training_mode=1")


@pytest.mark.parametrize(("opset", "extra"), [(7, 4), (9, 4), (14, 2)])
def test_training_outputs_listed(opset, extra):
    """Before opset 14 the 5-output form *is* training mode, used or not: ORT then normalizes
    with batch statistics (measured: a fold would be off by 184x max|ref| here)."""
    m = conv_bn_model(opset=opset, bn_attrs={"training_mode": 1} if opset >= 14 else {})
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    bn.output.extend(["running_mean", "running_var", "saved_mean", "saved_var"][:extra])
    r = refused(m, "training-mode")
    assert ("training_mode=1" if opset >= 14 else "training outputs 'running_mean'") in r.reason


def test_training_outputs_with_training_mode_0_refused():
    """Opset >= 14 with training_mode=0 and extra outputs: ORT rejects the model; so do we."""
    m = conv_bn_model(opset=15)
    m.graph.node[1].output.extend(["rm", "rv"])
    refused(m, "training-mode", "training outputs 'rm', 'rv'")


def test_opset6_is_test_zero():
    m = conv_bn_model(opset=6, ir=3)
    refused(m, "training-mode", "is_test=0")


def test_spatial_zero_before_opset9():
    m = conv_bn_model(opset=7, bn_attrs={"spatial": 0})
    refused(m, "spatial-0", "spatial=0")


def test_channel_mismatch():
    m = conv_bn_model()
    for p in ("bn_scale", "bn_B", "bn_mean", "bn_var"):
        _set(m, p, np.ones(7, np.float32))
    refused(m, "channel-mismatch", "shape [7]", "6 output channels")


def test_bias_shape_mismatch():
    m = conv_bn_model()
    _set(m, "b", np.ones(3, np.float32))
    refused(m, "channel-mismatch", "bias 'b'")


@pytest.mark.parametrize(
    ("var", "eps", "needle"),
    [(-1.0, 1e-5, "var=-1.0"), (0.0, 0.0, "var=0.0, epsilon=0,")],
    ids=["negative-var", "zero-var-zero-eps"],
)
def test_not_finite(var, eps, needle):
    m = conv_bn_model(epsilon=eps)
    v = numpy_helper.to_array(_init(m, "bn_var")).copy()
    v[2] = var
    _set(m, "bn_var", v)
    refused(m, "not-finite", "channel 2", needle)


def test_float16_overflow():
    """gamma 1000 over sqrt(1e-6 + 1e-5): s ~ 3e5, so |w| > 0.22 overflows 65504."""
    m = conv_bn_model(dtype=np.float16)
    _set(m, "bn_scale", np.full(6, 1000, np.float16))
    _set(m, "bn_var", np.full(6, 1e-6, np.float16))
    refused(m, "overflow", "overflows float16")


def test_bn_after_non_conv():
    m = conv_bn_model()
    conv = m.graph.node[0]
    conv.output[0] = "c"
    m.graph.node.insert(1, helper.make_node("Relu", ["c"], ["conv_out"], name="relu"))
    refused(m, "no-producer", "Relu 'relu', which has no fold rule")


def test_bn_on_graph_input():
    m = conv_bn_model()
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    bn.input[0] = "X"
    del m.graph.node[0]
    refused(m, "no-producer", "'X' is a graph input")


def test_conv_in_other_domain():
    m = conv_bn_model()
    m.graph.node[0].domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    refused(m, "not-foldable", "domain 'com.example'")


def test_refused_node_left_exactly_as_it_was_next_to_a_fold():
    """One refusal and one fold in the same model: the refused pair is byte-identical."""
    m = conv_bn_model()
    g = m.graph
    g.node.append(helper.make_node("Conv", ["X", "W"], ["c2"], name="conv2", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]))
    g.node.append(helper.make_node("BatchNormalization", ["c2", "s2", "bn_B", "bn_mean", "bn_var"],
                                   ["y2"], name="bn2"))
    g.input.append(helper.make_tensor_value_info("s2", TensorProto.FLOAT, [6]))
    g.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, list("abcd")))
    result = onnxfold.fuse(m)
    assert [f.node for f in result.folded] == ["bn"]
    assert [r.code for r in result.refused] == ["not-constant"]
    out = {n.name: n for n in result.model.graph.node}
    orig = {n.name: n for n in m.graph.node}
    assert out["bn2"] == orig["bn2"] and out["conv2"] == orig["conv2"]
    assert {"bn_B", "bn_mean", "bn_var"} <= {t.name for t in result.model.graph.initializer}
    onnx.checker.check_model(result.model, full_check=True)
    feeds_s2 = {"s2": np.ones(6, np.float32)}
    from tests.builders import random_feeds, run_ort

    feeds = {**random_feeds(m), **feeds_s2}
    for a, b in zip(run_ort(m, feeds), run_ort(result.model, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_unexpected_error_costs_only_that_fold(monkeypatch):
    """An exception in one rewrite is a refusal; the other BN in the model is still folded."""
    m = conv_bn_model()
    g = m.graph
    rng = np.random.default_rng(3)
    g.initializer.append(numpy_helper.from_array(rng.standard_normal((5, 4, 1, 1)).astype(
        np.float32), "W5"))
    for p in ("s5", "B5", "m5", "v5"):
        value = rng.uniform(0.5, 1.5, 5).astype(np.float32)
        g.initializer.append(numpy_helper.from_array(value, p))
    g.node.append(helper.make_node("Conv", ["X", "W5"], ["c5"], name="conv5", kernel_shape=[1, 1]))
    g.node.append(helper.make_node("BatchNormalization", ["c5", "s5", "B5", "m5", "v5"], ["y5"],
                                   name="bn5"))
    g.output.append(helper.make_tensor_value_info("y5", TensorProto.FLOAT, list("abcd")))
    real = bn_math.fold_conv

    def flaky(weight, *a):
        if weight.shape[0] == 5:
            raise RuntimeError("boom")
        return real(weight, *a)

    monkeypatch.setattr(bn_math, "fold_conv", flaky)
    result = onnxfold.fuse(m, batch=False)  # the batched path does not call fold_conv
    assert [f.node for f in result.folded] == ["bn"]
    assert [(r.node, r.code) for r in result.refused] == [("bn5", "internal-error")]
    assert "RuntimeError: boom" in result.refused[0].reason
    assert ops(result.model)["BatchNormalization"] == 1
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= 1e-5


def test_convtranspose_shared_output():
    m = conv_bn_model(op="ConvTranspose", group=2)
    m.graph.output.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None))
    refused(m, "shared-output", "ConvTranspose 'conv'", "it is a graph output")


def test_convtranspose_channel_mismatch():
    """A BN sized for the weight's axis 0 (C_in) instead of its output channels: refused."""
    m = conv_bn_model(op="ConvTranspose", cin=4, cout=6, group=2, bias=False)
    for p in ("bn_scale", "bn_B", "bn_mean", "bn_var"):
        _set(m, p, np.ones(4, np.float32))
    refused(m, "channel-mismatch", "shape [4]", "6 output channels")
