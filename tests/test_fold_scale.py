"""Scale layers: Conv/ConvTranspose/Gemm -> Mul/Add by a per-channel constant."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from onnxfold.fold.engine import select_rules
from tests.builders import (
    assert_refused,
    max_rel_error,
    ops,
    scale_model,
)

FP32_TOL = 1e-5  # a correct fold reorders roundings only (measured <= 3e-7); see test_fold_conv


def folds(m: onnx.ModelProto, n: int, tol: float = FP32_TOL):
    result = onnxfold.fuse(m)
    assert [r.reason for r in result.refused] == []
    assert len(result.folded) == n
    remaining = ops(result.model)
    assert not {"Mul", "Add", "Sub", "Div", "BatchNormalization"} & set(remaining)
    onnx.checker.check_model(result.model, full_check=True)
    assert max_rel_error(m, result.model) <= tol
    return result


CASES = {
    "caffe-scale-C11": ([("Mul", (6, 1, 1), False), ("Add", (6, 1, 1), False)], {}),
    "mul-1C11": ([("Mul", (1, 6, 1, 1), False)], {}),
    "add-alone": ([("Add", (6, 1, 1), False)], {}),
    "const-on-left": ([("Mul", (6, 1, 1), True), ("Add", (1, 6, 1, 1), True)], {}),
    "scalar": ([("Mul", (), False), ("Add", (1,), True)], {}),
    "no-bias": ([("Mul", (6, 1, 1), False), ("Add", (6, 1, 1), False)], {"bias": False}),
    "conv1d": ([("Mul", (6, 1), False), ("Add", (6, 1), False)], {"dims": 1}),
    "convtranspose": ([("Mul", (6, 1, 1), False), ("Add", (6, 1, 1), False)],
                      {"producer": "ConvTranspose", "group": 2}),
    "gemm": ([("Mul", (6,), False), ("Add", (1, 6), True)], {"producer": "Gemm"}),
    "bn-then-scale": ([("Mul", (6, 1, 1), False), ("Add", (6, 1, 1), False)], {"keep_bn": True}),
    # BatchNormalization decomposed by an exporter: (x - mean) * k + B and (x - mean) / d + B.
    "decomposed-mul": ([("Sub", (6, 1, 1), False), ("Mul", (6, 1, 1), False),
                        ("Add", (6, 1, 1), False)], {}),
    "decomposed-div": ([("Sub", (1, 6, 1, 1), False), ("Div", (6, 1, 1), False),
                        ("Add", (6, 1, 1), True)], {}),
    "c-minus-x": ([("Sub", (6, 1, 1), True)], {}),
    "gemm-decomposed": ([("Sub", (6,), False), ("Div", (6,), False)], {"producer": "Gemm"}),
}


@pytest.mark.parametrize(("layers", "kw"), CASES.values(), ids=CASES.keys())
def test_fold_scale(layers, kw):
    result = folds(scale_model(layers, **kw), len(layers) + kw.get("keep_bn", 0))
    rules = [f.rule for f in result.folded if f.op != "BatchNormalization"]
    assert rules == ["ScaleLayer"] * len(layers)


def test_scale_report_counts(tmp_path, capsys):
    from onnxfold.cli import main

    m = scale_model([("Mul", (6, 1, 1), False), ("Add", (6, 1, 1), False)], keep_bn=True)
    onnx.save(m, tmp_path / "s.onnx")
    assert main(["fuse", str(tmp_path / "s.onnx")]) == 0
    out = capsys.readouterr().out
    assert "folded 1 of 1 BatchNormalization" in out
    assert "folded 1 of 1 Mul (scale layer)" in out and "folded 1 of 1 Add (scale layer)" in out


def test_fp16_scale():
    folds(scale_model([("Mul", (6, 1, 1), False)], dtype=np.float16), 1, tol=2e-3)


REFUSALS = {
    "spatial": ([("Mul", (1, 6, 9, 9), False)], "not-per-channel", "varies along spatial axes"),
    "batch": ([("Add", (2, 6, 1, 1), False)], "broadcast-shape", "varies along the batch axis"),
    "rank-grows": ([("Mul", (1, 1, 6, 1, 1), False)], "broadcast-shape",
                   "more axes than the rank-4 output"),
    "channels": ([("Mul", (1, 1, 1, 1), False), ("Add", (3, 1, 1), False)], None, None),
}


@pytest.mark.parametrize(("layers", "code", "needle"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refuse_scale(layers, code, needle):
    m = scale_model(layers)
    if code is None:  # first layer folds, second (3 channels for 6) is refused
        result = onnxfold.fuse(m)
        assert [f.node for f in result.folded] == ["mul0"]
        assert [(r.node, r.code) for r in result.refused] == [("add1", "channel-mismatch")]
        assert "does not match 6 channels" in result.refused[0].reason
        return
    assert_refused(m, code, f"{layers[0][0]} '{layers[0][0].lower()}0'", needle)


def test_refuse_scale_shared_output():
    m = scale_model([("Mul", (6, 1, 1), False)])
    m.graph.output.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None))
    assert_refused(m, "shared-output", "Mul 'mul0'", "the output 'conv_out' of Conv 'conv'")


def test_refuse_scale_overflow_fp16():
    m = scale_model([("Mul", (6, 1, 1), False)], dtype=np.float16)
    c = next(t for t in m.graph.initializer if t.name == "c0")
    c.CopyFrom(numpy_helper.from_array(np.full((6, 1, 1), 6e4, np.float16), "c0"))
    b = next(t for t in m.graph.initializer if t.name == "b")
    b.CopyFrom(numpy_helper.from_array(np.full(6, 1.5, np.float16), "b"))  # 1.5 * 6e4 > 65504
    assert_refused(m, "overflow", "folded bias overflows float16")


def test_not_scale_layers_are_ignored():
    """Mul/Add not right after a foldable layer, or without a constant, are not reported."""
    m = scale_model([("Mul", (6, 1, 1), False)])
    mul = m.graph.node[-1]
    mul.input[1] = "conv_out"  # conv_out * conv_out: no constant operand
    result = onnxfold.fuse(m)
    assert result.folded == [] and result.refused == []


def test_skip_scale_layers():
    m = scale_model([("Mul", (6, 1, 1), False)], keep_bn=True)
    result = onnxfold.fuse(m, select_rules(skip=["ScaleLayer"]))
    assert [f.op for f in result.folded] == ["BatchNormalization"]
    assert result.refused == [] and ops(result.model)["Mul"] == 1
    assert max_rel_error(m, result.model) <= FP32_TOL


def test_div_by_zero_refused():
    m = scale_model([("Div", (6, 1, 1), False)])
    c = next(t for t in m.graph.initializer if t.name == "c0")
    v = numpy_helper.to_array(c).copy()
    v[3] = 0
    c.CopyFrom(numpy_helper.from_array(v, "c0"))
    assert_refused(m, "not-finite", "Div 'div0'", "division by zero")


def test_constant_divided_by_layer_is_not_a_scale_layer():
    m = scale_model([("Div", (6, 1, 1), True)])  # c / conv_out
    result = onnxfold.fuse(m)
    assert result.folded == [] and result.refused == []


def test_decomposed_bn_with_runtime_sqrt():
    """tf2onnx-style, not constant-folded: (x - mean) / Sqrt(var + eps) * gamma + beta."""
    m = scale_model([("Sub", (6, 1, 1), False)])
    g = m.graph
    rng = np.random.default_rng(9)
    for name, v in (("var", rng.uniform(1e-6, 2, (6, 1, 1))), ("eps", np.array(1e-3)),
                    ("gamma", rng.uniform(0.7, 1.3, (6, 1, 1))),
                    ("beta", rng.standard_normal((6, 1, 1)))):
        g.initializer.append(numpy_helper.from_array(v.astype(np.float32), name))
    g.node.extend([
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["s0", "sd"], ["n"], name="div"),
        helper.make_node("Mul", ["n", "gamma"], ["ng"], name="mul"),
        helper.make_node("Add", ["ng", "beta"], ["y"], name="add"),
    ])
    g.output[0].name = "y"
    result = folds(m, 4)
    assert ops(result.model) == {"Conv": 1}  # the Sqrt(Add(var, eps)) chain is gone too
    assert {t.name for t in result.model.graph.initializer} == {"W", "b"}
