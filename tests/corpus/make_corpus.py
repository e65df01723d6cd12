"""Writes tests/corpus/: one small model per fold or refusal case, and manifest.json.

Every entry exercises a different producer row or attribute (not reseeded copies) and states
its expected outcome: the rules that fold it, or the refusal code. test_corpus.py regenerates
every model and checks the stored bytes and the outcome; benchmarks can use the files as they are.

Usage (from the repository root): python -m tests.corpus.make_corpus
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.builders import (
    axes_const,
    between,
    bn_conv_model,
    bn_gemm_model,
    conv_bn_model,
    gemm_bn_model,
    matmul_bn_model,
    scale_model,
)
from tests.nested import function_model, if_model, loop_model

HERE = Path(__file__).resolve().parent
C, CT, G, MM = ("Conv+BatchNormalization", "ConvTranspose+BatchNormalization",
                "Gemm+BatchNormalization", "MatMul+BatchNormalization")
S, F, FG = "ScaleLayer", "BatchNormalization+Conv", "BatchNormalization+Gemm"


def _graph_output(m, name, rank=4):
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                        [f"g{i}" for i in range(rank)]))
    return m


def _overridable(m, name):
    t = next(t for t in m.graph.initializer if t.name == name)
    m.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return m


def _set(m, name, value):
    t = next(t for t in m.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=value.dtype), name))
    return m


def _unsqueeze(m, axes):
    return between(m, helper.make_node("Unsqueeze", ["conv_out", axes_const(m, "ax", axes)],
                                       ["mid"], name="unsq"), out_rank=4)


def _bn_training_outputs(m):
    m.graph.node[1].output.extend(["rm", "rv", "sm", "sv"])
    return m


def _zero_div(m):
    c = next(t for t in m.graph.initializer if t.name == "c0")
    v = numpy_helper.to_array(c).copy()
    v[3] = 0
    c.CopyFrom(numpy_helper.from_array(v, "c0"))
    return m


def _f64_const(m):
    c = next(t for t in m.graph.initializer if t.name == "c0")
    c.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(c).astype(np.float64), "c0"))
    return m


def _qdq_weight(m):
    """The Conv weight is DequantizeLinear(int8 W, scale), as in QDQ models."""
    w = next(t for t in m.graph.initializer if t.name == "W")
    a = numpy_helper.to_array(w)
    scale = np.float32(np.abs(a).max() / 127)
    m.graph.initializer.remove(w)
    m.graph.initializer.extend([numpy_helper.from_array(np.round(a / scale).astype(np.int8), "W_q"),
                                numpy_helper.from_array(scale, "W_scale")])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["W_q", "W_scale"], ["W"],
                                            name="dq_w"))
    return m


def _var(m, channel, value):
    v = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "bn_var")).copy()
    v[channel] = value
    return _set(m, "bn_var", v)


# name -> (what it shows, model factory, expected: list of fold rules, or a refusal code)
ENTRIES = {
    "conv2d": ("Conv 3x3 with bias", lambda: conv_bn_model(), [C]),
    "conv-no-bias": ("Conv gains a bias", lambda: conv_bn_model(bias=False), [C]),
    "conv1d": ("1-D Conv", lambda: conv_bn_model(dims=1), [C]),
    "conv3d": ("3-D Conv", lambda: conv_bn_model(dims=3, size=5), [C]),
    "conv-group2": ("grouped Conv", lambda: conv_bn_model(group=2), [C]),
    "conv-depthwise": ("depthwise Conv", lambda: conv_bn_model(cin=6, cout=6, group=6), [C]),
    "conv-stride-dilation": ("strides 2, dilations 2", lambda: conv_bn_model(
        conv_attrs={"strides": [2, 2], "dilations": [2, 2], "pads": [2, 2, 2, 2]}), [C]),
    "conv-auto-pad": ("auto_pad SAME_UPPER", lambda: conv_bn_model(
        conv_attrs={"auto_pad": "SAME_UPPER", "strides": [2, 2]}), [C]),
    "conv-constant-nodes": ("weights in Constant nodes (Paddle)",
                            lambda: conv_bn_model(constant_nodes=True), [C]),
    "conv-fp16": ("float16 model", lambda: conv_bn_model(dtype=np.float16), [C]),
    "conv-fp16-fp32-params": ("opset 15 BN: fp16 input, fp32 parameters", lambda: conv_bn_model(
        dtype=np.float16, param_dtype=np.float32, opset=15), [C]),
    "conv-opset7": ("BN opset 7 (spatial=1 default)", lambda: conv_bn_model(opset=7), [C]),
    "conv-ir3": ("IR 3: initializers are graph inputs",
                 lambda: conv_bn_model(ir=3, opset=8, bias=False), [C]),
    "conv-bn-bn": ("Conv -> BN -> BN", lambda: scale_model([], keep_bn=True), [C]),
    "refuse-conv-output-shared": ("Conv output is also a graph output", lambda: _graph_output(
        conv_bn_model(), "conv_out"), "shared-output"),
    "refuse-overridable-var": ("BN var is an overridable initializer",
                               lambda: _overridable(conv_bn_model(), "bn_var"), "not-constant"),
    "refuse-training-mode": ("training_mode=1", lambda: conv_bn_model(
        opset=14, bn_attrs={"training_mode": 1}), "training-mode"),
    "refuse-training-outputs": ("opset 9 BN with 5 outputs (training mode by the spec)",
                                lambda: _bn_training_outputs(conv_bn_model(opset=9)),
                                "training-mode"),
    "refuse-spatial0": ("opset 7 BN with spatial=0", lambda: conv_bn_model(
        opset=7, bn_attrs={"spatial": 0}), "spatial-0"),
    "refuse-negative-var": ("var + eps < 0", lambda: _var(conv_bn_model(), 2, -1.0),
                            "not-finite"),
    "refuse-fp16-overflow": ("folded fp16 weights above 65504", lambda: _set(_set(
        conv_bn_model(dtype=np.float16), "bn_scale", np.full(6, 1000, np.float16)),
        "bn_var", np.full(6, 1e-6, np.float16)), "overflow"),
    "refuse-channel-mismatch": ("BN sized 7 after a 6-channel Conv", lambda: _set(_set(_set(_set(
        conv_bn_model(), "bn_scale", np.ones(7, np.float32)), "bn_B", np.ones(7, np.float32)),
        "bn_mean", np.ones(7, np.float32)), "bn_var", np.ones(7, np.float32)),
        "channel-mismatch"),
    "convtranspose-group2": ("grouped ConvTranspose", lambda: conv_bn_model(
        op="ConvTranspose", group=2), [CT]),
    "convtranspose-depthwise": ("depthwise ConvTranspose", lambda: conv_bn_model(
        op="ConvTranspose", cin=6, cout=6, group=6), [CT]),
    "convtranspose-output-padding": ("output_padding, strides 2", lambda: conv_bn_model(
        op="ConvTranspose", bias=False,
        conv_attrs={"strides": [2, 2], "output_padding": [1, 1], "pads": [1, 1, 1, 1]}), [CT]),
    "refuse-convtranspose-shared": ("ConvTranspose output is a graph output", lambda: _graph_output(
        conv_bn_model(op="ConvTranspose"), "conv_out"), "shared-output"),
    "gemm": ("Gemm with C [N]", lambda: gemm_bn_model(), [G]),
    "gemm-transb-alpha-beta": ("transB, alpha, beta", lambda: gemm_bn_model(
        trans_b=1, alpha=0.5, beta=2.0), [G]),
    "gemm-no-c": ("Gemm without C", lambda: gemm_bn_model(c_shape=None), [G]),
    "gemm-c-mx1": ("C of shape [M, 1] becomes [M, N]", lambda: gemm_bn_model(c_shape=(3, 1)),
                   [G]),
    "refuse-gemm-weight-input": ("Gemm B is an overridable initializer",
                                 lambda: _overridable(gemm_bn_model(), "Bw"), "not-constant"),
    "matmul": ("MatMul alone becomes Gemm", lambda: matmul_bn_model(), [MM]),
    "matmul-add": ("MatMul -> Add(const)", lambda: matmul_bn_model(add="right"), [MM]),
    "matmul-add-left": ("MatMul -> Add(const, x)", lambda: matmul_bn_model(add="left"), [MM]),
    "refuse-matmul-3d": ("(N, T, C) MatMul: BN normalizes T", lambda: matmul_bn_model(rank=3),
                         "channel-axis"),
    "refuse-matmul-unknown-rank": ("MatMul input of unknown rank", lambda: matmul_bn_model(
        declare_rank=False), "channel-axis"),
    "through-identity": ("Conv -> Identity -> BN", lambda: between(conv_bn_model(),
        helper.make_node("Identity", ["conv_out"], ["mid"])), [C]),
    "through-unsqueeze": ("Conv1D -> Unsqueeze(2) -> BN (PaddleOCR)",
                          lambda: _unsqueeze(conv_bn_model(dims=1), [2]), [C]),
    "refuse-unsqueeze-axis1": ("Unsqueeze(1) moves the channel axis",
                               lambda: _unsqueeze(conv_bn_model(dims=1), [1]), "channel-axis"),
    "scale-caffe": ("Caffe BatchNorm+Scale: Conv -> Mul -> Add", lambda: scale_model(
        [("Mul", (6, 1, 1), False), ("Add", (6, 1, 1), False)]), [S, S]),
    "scale-const-left-scalar": ("Mul(c, x) with a scalar c", lambda: scale_model(
        [("Mul", (), True)]), [S]),
    "scale-gemm": ("Gemm -> Mul[C] -> Add[1, C]", lambda: scale_model(
        [("Mul", (6,), False), ("Add", (1, 6), True)], producer="Gemm"), [S, S]),
    "scale-convtranspose": ("ConvTranspose -> Mul -> Add", lambda: scale_model(
        [("Mul", (6, 1, 1), False), ("Add", (6, 1, 1), False)], producer="ConvTranspose"),
        [S, S]),
    "decomposed-bn": ("(x - mean) / d + B after Conv", lambda: scale_model(
        [("Sub", (6, 1, 1), False), ("Div", (6, 1, 1), False), ("Add", (6, 1, 1), False)]),
        [S, S, S]),
    "refuse-decomposed-div-zero": ("x / d with a zero in d", lambda: _zero_div(
        scale_model([("Div", (6, 1, 1), False)])), "not-finite"),
    "refuse-scale-spatial": ("Mul constant varies spatially", lambda: scale_model(
        [("Mul", (1, 6, 9, 9), False)]), "not-per-channel"),
    "refuse-scale-batch": ("Add constant varies along the batch axis", lambda: scale_model(
        [("Add", (2, 6, 1, 1), False)]), "broadcast-shape"),
    "bn-conv": ("BN -> Conv without padding", lambda: bn_conv_model(), [F]),
    "bn-conv-group2": ("BN -> grouped Conv", lambda: bn_conv_model(group=2), [F]),
    "refuse-bn-conv-padded": ("BN -> Conv with pads", lambda: bn_conv_model(
        conv_attrs={"pads": [1, 1, 1, 1]}), "padding"),
    "bn-gemm": ("BN on (N, K) -> Gemm, transB, alpha, beta", lambda: bn_gemm_model(
        trans_b=1, alpha=0.5, beta=2.0), [FG]),
    "if-branches": ("Conv -> BN in both If branches, weights from the main graph",
                    lambda: if_model(outer_consts=True), [C, C]),
    "loop-body": ("Conv -> BN in a Loop body", loop_model, [C]),
    "function-body": ("Conv -> BN in a model-local function called twice", function_model, [C]),
    "refuse-function-attribute-ref": ("BN epsilon taken from the function's caller",
                                      lambda: function_model(eps_ref=True), "attribute-ref"),
    "conv-opset6": ("opset 6 BN (is_test, spatial): checked on opset-7 conversions",
                    lambda: conv_bn_model(opset=6, ir=3, bn_attrs={"is_test": 1, "spatial": 1}),
                    [C]),
    "refuse-qdq-weight": ("Conv weight from DequantizeLinear (QDQ)",
                          lambda: _qdq_weight(conv_bn_model()), "not-constant"),
    "refuse-bn-gemm-trans-a": ("BN -> Gemm with transA=1", lambda: bn_gemm_model(
        trans_a=1, k=3), "channel-axis"),
    "refuse-scale-dtype": ("Mul by a float64 constant after a float32 Conv", lambda: _f64_const(
        scale_model([("Mul", (6, 1, 1), False)])), "broadcast-dtype"),
}


def manifest() -> dict:
    return {
        name: {"what": what, **({"fold": exp} if isinstance(exp, list) else {"refuse": exp})}
        for name, (what, _, exp) in sorted(ENTRIES.items())
    }


def build(name: str) -> bytes:
    return ENTRIES[name][1]().SerializeToString(deterministic=True)


def main() -> int:
    for name in sorted(ENTRIES):
        (HERE / f"{name}.onnx").write_bytes(build(name))
    (HERE / "manifest.json").write_text(json.dumps(manifest(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(ENTRIES)} models to {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
