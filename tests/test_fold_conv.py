"""Conv -> BatchNormalization folds: op counts, onnx.checker, and ORT parity (optimizations off)."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from onnxfold.modelio import model_bytes
from onnxfold.parity import check_parity
from tests.builders import conv_bn_model, max_rel_error, ops

# Tolerances, relative to max |reference output|. A correct float32 fold only reorders roundings:
# measured here at <= 4e-7, so 1e-5 is 25x headroom, and a wrong epsilon or channel order is
# off by > 1e-2 on these models (each has a channel with variance 1e-6). float16 weights are
# rounded to 11 bits after the fold: measured <= 5e-4 for one layer.
FP32_TOL = 1e-5
FP16_TOL = 2e-3


def assert_folded(original: onnx.ModelProto, tol: float = FP32_TOL, n: int = 1):
    result = onnxfold.fuse(original)
    assert [r.reason for r in result.refused] == []
    assert len(result.folded) == n
    assert ops(result.model)["BatchNormalization"] == 0
    assert ops(result.model)["Conv"] == ops(original)["Conv"]
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(original, result.model) <= tol
    return result


CONV_CASES = {
    "2d": {},
    "no-bias": {"bias": False},
    "1d": {"dims": 1},
    "3d": {"dims": 3, "size": 5},
    "group2": {"group": 2},
    "depthwise": {"cin": 6, "cout": 6, "group": 6},
    "depthwise-multiplier": {"cin": 3, "cout": 6, "group": 3},
    "stride2-dilation2": {"conv_attrs": {"strides": [2, 2], "dilations": [2, 2],
                                         "pads": [2, 2, 2, 2]}},
    "asymmetric-pads": {"conv_attrs": {"pads": [0, 1, 2, 0]}},
    "auto-pad-same-upper": {"conv_attrs": {"auto_pad": "SAME_UPPER", "strides": [2, 2]}},
    "auto-pad-same-lower": {"conv_attrs": {"auto_pad": "SAME_LOWER"}},
    "auto-pad-valid": {"conv_attrs": {"auto_pad": "VALID"}},
    "1x1": {"k": 1},
    "constant-nodes": {"constant_nodes": True},
    "tiny-epsilon": {"epsilon": 1e-7},
    "bn-opset7": {"opset": 7},
    "bn-opset9": {"opset": 9},
    "bn-opset14": {"opset": 14},
    "bn-opset15": {"opset": 15},
    "opset21": {"opset": 21, "ir": 10},
    "bn-output-is-graph-output": {"tail": None},
}


@pytest.mark.parametrize("kw", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_fold(kw):
    assert_folded(conv_bn_model(**kw))


def test_fold_bias_values():
    """The Conv that had no bias gains b' = (0 - mean) * s + B, exactly as computed in float64."""
    m = conv_bn_model(bias=False, tail=None)
    result = assert_folded(m)
    conv = result.model.graph.node[0]
    assert len(conv.input) == 3 and conv.output[0] == "bn_out"
    init = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    orig = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    eps = float(np.float32(1e-5))  # attributes are float32: the fold uses the stored value
    s = orig["bn_scale"] / np.sqrt(orig["bn_var"] + eps)
    np.testing.assert_array_equal(init[conv.input[2]],
                                  (orig["bn_B"] - orig["bn_mean"] * s).astype(np.float32))
    w_expect = (orig["W"] * s[:, None, None, None]).astype(np.float32)
    np.testing.assert_array_equal(init["W"], w_expect)


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"group": 2}], ids=["bias", "no-bias", "g2"])
def test_fold_float16(kw):
    m = conv_bn_model(dtype=np.float16, **kw)
    result = assert_folded(m, tol=FP16_TOL)
    for t in result.model.graph.initializer:
        assert t.data_type == TensorProto.FLOAT16


def test_fold_float16_input_float32_params():
    """Opset 15 BN with fp16 input and fp32 parameters: folded tensors take the Conv's fp16."""
    m = conv_bn_model(dtype=np.float16, param_dtype=np.float32, opset=15)
    result = assert_folded(m, tol=FP16_TOL)
    assert {t.data_type for t in result.model.graph.initializer} == {TensorProto.FLOAT16}


def test_fold_float16_tiny_epsilon_computed_in_float64():
    """Zero variance, epsilon 1e-7: s = 1/sqrt(1e-7) ~ 3162, exact up to one fp16 rounding."""
    m = conv_bn_model(dtype=np.float16, epsilon=1e-7, tail=None)
    var = next(t for t in m.graph.initializer if t.name == "bn_var")
    var.CopyFrom(numpy_helper.from_array(np.zeros(6, np.float16), "bn_var"))
    w0 = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "W")
    gamma = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "bn_scale")
    result = onnxfold.fuse(m)
    w = next(numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == "W")
    s = gamma.astype(np.float64) / np.sqrt(float(np.float32(1e-7)))  # epsilon is stored as float32
    expect = w0.astype(np.float64) * s[:, None, None, None]
    np.testing.assert_array_equal(w, expect.astype(np.float16))


@pytest.mark.parametrize("dtype", [np.float64, ml_dtypes.bfloat16], ids=["float64", "bfloat16"])
def test_fold_dtypes_ort_cannot_run(dtype):
    """ORT's CPU provider has no float64/bfloat16 Conv: parity runs on float32 copies, said so."""
    m = conv_bn_model(dtype=np.float32, opset=22, ir=10)  # Conv takes bfloat16 from opset 22
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(dtype), t.name))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for vi in (*m.graph.input, *m.graph.output):
        vi.type.tensor_type.elem_type = elem
    result = onnxfold.fuse(m)
    assert len(result.folded) == 1 and ops(result.model)["BatchNormalization"] == 0
    onnx.checker.check_model(result.model, full_check=True)
    assert {t.data_type for t in result.model.graph.initializer} == {elem}
    rep = check_parity(m, result.model)
    assert rep.status == "pass", rep
    assert any("float32 copies" in n for n in rep.notes)
    # float64 folds are exact to ~1e-15; bfloat16 rounds to 8 bits (3.9e-3 each).
    tol = 1e-6 if dtype == np.float64 else 2e-2
    assert rep.outputs[0].max_abs <= tol * rep.outputs[0].ref_max


def test_fold_ir3_initializers_are_inputs():
    """Before IR 4 every initializer is a graph input: new ones listed, dropped ones unlisted."""
    m = conv_bn_model(ir=3, opset=8, bias=False)
    result = assert_folded(m)
    g = result.model.graph
    assert sorted(i.name for i in g.input) == sorted(["X", "W", "bn_out_bias"])
    assert sorted(t.name for t in g.initializer) == ["W", "bn_out_bias"]


def test_interface_names_opset_metadata_kept():
    m = conv_bn_model()
    m.metadata_props.add(key="author", value="me")
    m.doc_string = "doc"
    result = assert_folded(m)
    out = result.model
    assert list(out.graph.input) == list(m.graph.input)
    assert list(out.graph.output) == list(m.graph.output)
    assert out.opset_import == m.opset_import and out.ir_version == m.ir_version
    assert out.doc_string == "doc"
    props = {p.key: p.value for p in out.metadata_props}
    assert props["author"] == "me"
    assert props["onnxfold.version"] == onnxfold.__version__
    assert json.loads(props["onnxfold.folded"]) == {"Conv+BatchNormalization": ["bn"]}
    assert [n.name for n in out.graph.node] == ["conv", "tail"]
    assert sorted(t.name for t in out.graph.initializer) == ["W", "b"]  # bn_* dropped


def test_value_info_consistent():
    m = onnx.shape_inference.infer_shapes(conv_bn_model(), strict_mode=True)
    assert {v.name for v in m.graph.value_info} == {"conv_out", "bn_out"}
    result = assert_folded(m)
    vi = {v.name: v for v in result.model.graph.value_info}
    assert set(vi) == {"bn_out"}
    assert vi["bn_out"].type == next(v for v in m.graph.value_info if v.name == "bn_out").type


def test_value_info_moves_to_new_name():
    """Only the Conv output had an entry: it now describes the same tensor under the BN's name."""
    m = onnx.shape_inference.infer_shapes(conv_bn_model(), strict_mode=True)
    conv_vi = next(v for v in m.graph.value_info if v.name == "conv_out")
    del m.graph.value_info[:]
    m.graph.value_info.append(conv_vi)
    result = assert_folded(m)
    assert [v.name for v in result.model.graph.value_info] == ["bn_out"]
    assert result.model.graph.value_info[0].type == conv_vi.type


def _two_convs_sharing_w(second_has_bn: bool) -> onnx.ModelProto:
    """X -> conv(W) -> bn -> Relu -> Y1 ;  X -> conv2(W) [-> bn2] -> Y2."""
    m = conv_bn_model()
    g = m.graph
    g.node.append(helper.make_node("Conv", ["X", "W"], ["c2"], name="conv2", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]))
    out = "c2"
    if second_has_bn:
        rng = np.random.default_rng(7)
        for p, v in (("s2", rng.uniform(0.7, 1.3, 6)), ("B2", rng.standard_normal(6)),
                     ("m2", rng.standard_normal(6)), ("v2", rng.uniform(0.5, 2, 6))):
            g.initializer.append(numpy_helper.from_array(v.astype(np.float32), p))
        g.node.append(helper.make_node("BatchNormalization", ["c2", "s2", "B2", "m2", "v2"],
                                       ["Y2"], name="bn2"))
        out = "Y2"
    g.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["a", "b", "c", "d"]))
    return m


def test_shared_weight_copied_for_other_conv():
    m = _two_convs_sharing_w(second_has_bn=False)
    result = assert_folded(m)
    conv, conv2 = (n for n in result.model.graph.node if n.op_type == "Conv")
    assert conv.input[1] == "W_folded" and conv2.input[1] == "W"
    inits = {t.name: t for t in result.model.graph.initializer}
    assert inits["W"] == next(t for t in m.graph.initializer if t.name == "W")  # untouched


def test_shared_weight_both_folded():
    m = _two_convs_sharing_w(second_has_bn=True)
    result = assert_folded(m, n=2)
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] != convs[1].input[1]


def test_bn_param_shared_with_other_node_is_kept():
    m = conv_bn_model()
    m.graph.node.append(helper.make_node("Mul", ["Y", "bn_mean_4d"], ["Z"], name="mul"))
    m.graph.node.insert(0, helper.make_node("Reshape", ["bn_mean", "shape4"], ["bn_mean_4d"]))
    m.graph.initializer.append(numpy_helper.from_array(np.array([1, 6, 1, 1], np.int64), "shape4"))
    m.graph.output.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, list("abcd")))
    result = assert_folded(m)
    assert "bn_mean" in {t.name for t in result.model.graph.initializer}
    assert "bn_var" not in {t.name for t in result.model.graph.initializer}


def test_new_name_never_collides():
    """A tensor named like our new bias already exists (and one inside a subgraph): fresh names."""
    m = conv_bn_model(bias=False)
    g = m.graph
    # An unrelated Conv reads an initializer called "bn_out_bias"; a peer rewires it silently.
    g.initializer.append(numpy_helper.from_array(np.full(6, 3.0, np.float32), "bn_out_bias"))
    g.node.append(helper.make_node("Conv", ["X", "W", "bn_out_bias"], ["other"], name="other",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["other"], ["bn_out_bias_1"])], "then", [],
        [helper.make_tensor_value_info("bn_out_bias_1", TensorProto.FLOAT, None)])
    g.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    g.node.append(helper.make_node("If", ["cond"], ["Z"], then_branch=then_g, else_branch=then_g))
    g.output.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
    result = onnxfold.fuse(m)
    assert len(result.folded) == 1
    conv = next(n for n in result.model.graph.node if n.name == "conv")
    assert conv.input[2] == "bn_out_bias_2"
    other = next(n for n in result.model.graph.node if n.name == "other")
    assert other.input[2] == "bn_out_bias"
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    np.testing.assert_array_equal(inits["bn_out_bias"], np.full(6, 3.0, np.float32))
    assert max_rel_error(m, result.model) <= FP32_TOL


def test_weight_overridable_elsewhere_is_not_used_in_place():
    """Bias that is also a graph output: copied, never changed in place."""
    m = conv_bn_model()
    m.graph.output.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [6]))
    result = assert_folded(m)
    conv = result.model.graph.node[0]
    assert conv.input[2] == "b_folded"


def test_bundled_model_all_folded(bundled_model):
    result = assert_folded(bundled_model, n=7)
    assert ops(result.model) == {"Conv": 8, "LeakyRelu": 7, "MaxPool": 6}


def test_fuse_does_not_mutate_argument():
    m = conv_bn_model()
    before = model_bytes(m)
    onnxfold.fuse(m)
    assert model_bytes(m) == before


def test_deterministic_and_idempotent(bundled_model):
    a = model_bytes(onnxfold.fuse(bundled_model).model)
    b = model_bytes(onnxfold.fuse(bundled_model).model)
    assert a == b
    again = onnxfold.fuse(onnxfold.fuse(bundled_model).model)
    assert again.folded == [] and again.refused == []
    assert model_bytes(again.model) == a


def test_refit_metadata_merges_records():
    """A model folded in two passes keeps one record listing every folded node."""
    m = _two_convs_sharing_w(second_has_bn=True)
    bn2 = next(n for n in m.graph.node if n.name == "bn2")
    bn2.input[1] = "s2_in"
    m.graph.input.append(helper.make_tensor_value_info("s2_in", TensorProto.FLOAT, [6]))
    first = onnxfold.fuse(m)
    assert [f.node for f in first.folded] == ["bn"]
    bn2 = next(n for n in first.model.graph.node if n.name == "bn2")
    bn2.input[1] = "s2"
    del first.model.graph.input[1:]
    second = onnxfold.fuse(first.model)
    props = {p.key: p.value for p in second.model.metadata_props}
    assert json.loads(props["onnxfold.folded"]) == {"Conv+BatchNormalization": ["bn", "bn2"]}


def test_two_batchnorms_in_a_row_both_fold():
    """Conv -> BN -> BN: after the first fold the Conv produces the first BN's output, so the
    second folds into the same Conv, reading the already-folded weights."""
    m = conv_bn_model(tail=None)
    g = m.graph
    rng = np.random.default_rng(11)
    for p, v in (("s2", rng.uniform(0.7, 1.3, 6)), ("B2", rng.standard_normal(6)),
                 ("m2", rng.standard_normal(6)), ("v2", rng.uniform(1e-6, 2, 6))):
        g.initializer.append(numpy_helper.from_array(v.astype(np.float32), p))
    g.node.append(helper.make_node("BatchNormalization", ["bn_out", "s2", "B2", "m2", "v2"],
                                   ["y2"], name="bn2"))
    g.output[0].name = "y2"
    result = assert_folded(m, n=2)
    assert [n.name for n in result.model.graph.node] == ["conv"]
    assert result.model.graph.node[0].output[0] == "y2"


CONVTRANSPOSE_CASES = {
    "2d": {},
    "no-bias": {"bias": False},
    "1d": {"dims": 1},
    "3d": {"dims": 3, "size": 4},
    "group2": {"group": 2},
    "group2-uneven": {"cin": 4, "cout": 6, "group": 2},
    "depthwise": {"cin": 6, "cout": 6, "group": 6},
    "output-padding": {"conv_attrs": {"strides": [2, 2], "output_padding": [1, 1],
                                      "pads": [1, 1, 1, 1]}},
    "grouped-output-padding-no-bias": {"group": 2, "bias": False, "conv_attrs": {
        "strides": [2, 3], "output_padding": [1, 2], "pads": [0, 1, 0, 1], "dilations": [2, 1]}},
    "auto-pad-same-upper": {"conv_attrs": {"auto_pad": "SAME_UPPER", "strides": [2, 2]}},
    "constant-nodes": {"constant_nodes": True},
}


@pytest.mark.parametrize("kw", CONVTRANSPOSE_CASES.values(), ids=CONVTRANSPOSE_CASES.keys())
def test_fold_convtranspose(kw):
    result = assert_folded(conv_bn_model(op="ConvTranspose", **kw))
    assert [f.rule for f in result.folded] == ["ConvTranspose+BatchNormalization"]


def test_fold_convtranspose_float16():
    assert_folded(conv_bn_model(op="ConvTranspose", group=2, dtype=np.float16), tol=FP16_TOL)
