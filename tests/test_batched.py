"""The batched Conv → BN path (fold/batched.py) makes exactly what the rules make, or declines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

import onnxfold
from onnxfold.fold import batched, bn_math
from onnxfold.fold.engine import all_rules
from onnxfold.modelio import TENSOR_ATTR_OPS
from tests.builders import conv_bn_model, max_rel_error, ops
from tools.bench.models import chain

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.onnx"))
RULES = {r.name for r in all_rules()}


def _taken(m: onnx.ModelProto) -> bool:
    return batched.prepare(m, RULES, frozenset(), True) is not None


def _same_as_rules(m: onnx.ModelProto) -> onnxfold.FuseResult:
    """Fuse both ways; assert the same model bytes, folds and refusals; return the batched."""
    fast, slow = onnxfold.fuse(m), onnxfold.fuse(m, batch=False)
    assert fast.folded == slow.folded
    assert fast.refused == slow.refused
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    return fast


def _two_blocks(**kw) -> onnx.ModelProto:
    """conv_bn_model, then a second Conv → BN (unnamed, no bias) on its output."""
    m = conv_bn_model(**kw)
    g = m.graph
    rng = np.random.default_rng(7)
    dims = kw.get("dims", 2)
    dtype = kw.get("dtype", np.float32)
    g.initializer.append(numpy_helper.from_array(
        (rng.standard_normal((3, 6, *[1] * dims)) * 0.3).astype(dtype), "W2"))
    for p, v in (("s2", rng.uniform(0.5, 1.5, 3)), ("B2", rng.standard_normal(3)),
                 ("m2", rng.standard_normal(3)), ("v2", rng.uniform(0.2, 2, 3))):
        g.initializer.append(numpy_helper.from_array(v.astype(dtype), p))
    y = g.output[0].name
    g.node.append(helper.make_node("Conv", [y, "W2"], ["c2"], kernel_shape=[1] * dims))
    g.node.append(helper.make_node("BatchNormalization", ["c2", "s2", "B2", "m2", "v2"], ["y2"],
                                   epsilon=1e-3, momentum=0.9))
    elem = g.output[0].type.tensor_type.elem_type
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("y2", elem, list("abcde"[:dims + 2])))
    return m


def test_deep_chain_takes_the_batched_path_with_the_rules_bytes():
    m = chain(300)
    assert _taken(m)
    r = _same_as_rules(m)
    assert len(r.folded) == 300 and not r.refused
    assert ops(r.model) == {"Conv": 300, "Relu": 300}
    onnx.checker.check_model(r.model, full_check=True)
    assert max_rel_error(chain(300), r.model) <= 1e-4


@pytest.mark.parametrize("kw", [
    {}, {"bias": False}, {"epsilon": 1e-3}, {"dims": 1}, {"dims": 3, "k": 1}, {"group": 2},
    {"bn_attrs": {"momentum": 0.5}}, {"opset": 15, "bn_attrs": {"training_mode": 0}},
    {"opset": 7}, {"ir": 4},
])
def test_plain_models_take_the_batched_path(kw):
    m = _two_blocks(**kw)
    assert _taken(m)
    r = _same_as_rules(m)
    assert [f.node for f in r.folded] == ["bn", "<BatchNormalization -> y2>"]
    assert [f.into for f in r.folded] == ["Conv 'conv'", "Conv (unnamed, output 'c2')"]
    onnx.checker.check_model(r.model, full_check=True)
    assert max_rel_error(_two_blocks(**kw), r.model) <= 1e-5


def test_value_info_and_name_clashes_are_handled_as_the_rules_do():
    m = _two_blocks(bias=False)
    g = m.graph
    # value_info of the Conv outputs (renamed to the BN outputs), of a BN output, and tensors
    # already called "<bn output>_bias" and "<bn output>_bias_1".
    g.value_info.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, list("abcd"))
                         for n in ("conv_out", "c2", "y2_x")])
    g.value_info.append(helper.make_tensor_value_info("bn_out", TensorProto.FLOAT, list("abcd")))
    g.initializer.extend([numpy_helper.from_array(np.zeros(1, np.float32), n)
                          for n in ("bn_out_bias", "bn_out_bias_1")])
    g.node.append(helper.make_node("Identity", ["bn_out_bias"], ["y2_bias"]))
    g.node.append(helper.make_node("Identity", ["bn_out_bias_1"], ["y2_x"]))
    g.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, list("abcd"))
                     for n in ("y2_bias", "y2_x")])
    assert _taken(m)
    r = _same_as_rules(m)
    names = {t.name for t in r.model.graph.initializer}
    assert {"bn_out_bias_2", "y2_bias_1"} <= names
    # c2 -> y2, a graph output (typed there), and conv_out -> bn_out, which has one: dropped
    assert [v.name for v in r.model.graph.value_info] == ["y2_x", "bn_out"]


def _declined(make):
    m = make()
    assert not _taken(m)
    return _same_as_rules(m)


def _shared_weight():
    m = _two_blocks()
    m.graph.node[-2].input[1] = "W"  # both Convs read W: no 1x1 any more, so give W2's shape
    m.graph.node[-2].ClearField("attribute")
    m.graph.node[-2].attribute.extend([helper.make_attribute("kernel_shape", [3, 3]),
                                       helper.make_attribute("pads", [1, 1, 1, 1])])
    return m


def _shared_param():
    m = _two_blocks()
    m.graph.node[-1].input[3] = "m2"
    m.graph.node[-1].input[1] = "s2"
    m.graph.node[-1].input[2] = "s2"
    return m


def _conv_output_also_graph_output():
    m = _two_blocks()
    m.graph.output.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, list("abcd")))
    return m


def _not_finite():
    m = _two_blocks()
    v = next(t for t in m.graph.initializer if t.name == "v2")
    v.CopyFrom(numpy_helper.from_array(np.array([1, -1, 1], np.float32), "v2"))
    return m


def _overflow():
    m = _two_blocks()
    v = next(t for t in m.graph.initializer if t.name == "v2")
    v.CopyFrom(numpy_helper.from_array(np.array([1, 1e-38, 1], np.float32), "v2"))
    s = next(t for t in m.graph.initializer if t.name == "s2")
    s.CopyFrom(numpy_helper.from_array(np.array([1, 3e38, 1], np.float32), "s2"))
    return m


def _identity_between():
    m = _two_blocks()
    g = m.graph
    g.node.insert(len(g.node) - 1, helper.make_node("Identity", ["c2"], ["c2i"]))
    g.node[-1].input[0] = "c2i"
    return m


def _scale_layer():
    m = _two_blocks()
    g = m.graph
    g.initializer.append(numpy_helper.from_array(np.full((1, 3, 1, 1), 2, np.float32), "k"))
    g.node.append(helper.make_node("Mul", ["y2", "k"], ["y3"]))
    g.output[0].name = "y3"
    return m


def _param_shape():
    m = _two_blocks()
    v = next(t for t in m.graph.initializer if t.name == "m2")
    v.CopyFrom(numpy_helper.from_array(np.zeros((3, 1), np.float32), "m2"))
    return m


def _overridable():
    m = _two_blocks()
    m.graph.input.append(helper.make_tensor_value_info("v2", TensorProto.FLOAT, [3]))
    return m


def _training():
    m = _two_blocks(opset=15)
    m.graph.node[-1].attribute.append(helper.make_attribute("training_mode", 1))
    return m


def _bn_in_gemm_chain():
    m = _two_blocks()
    m.graph.node[-2].op_type = "Gemm"  # a Gemm's BN: another rule
    return m


@pytest.mark.parametrize("make", [
    _shared_weight, _shared_param, _conv_output_also_graph_output, _not_finite, _overflow,
    _identity_between, _scale_layer, _overridable, _training, _param_shape,
    lambda: _two_blocks(dtype=np.float16), lambda: _two_blocks(opset=6),
    lambda: _two_blocks(ir=3), lambda: conv_bn_model(constant_nodes=True),
], ids=["shared-weight", "shared-param", "graph-output", "not-finite", "overflow", "identity",
        "scale-layer", "overridable", "training", "param-shape", "float16", "opset6", "ir3",
        "constant-nodes"])
def test_anything_else_goes_to_the_rules(make):
    _declined(make)


def test_a_refusal_of_one_bn_leaves_the_whole_model_to_the_rules():
    r = _declined(_not_finite)
    assert [f.node for f in r.folded] == ["bn"]
    assert [x.code for x in r.refused] == ["not-finite"]


def test_gemm_bn_is_not_batched():
    m = _bn_in_gemm_chain()
    assert not _taken(m)


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_models_fold_the_same_either_way(path):
    _same_as_rules(onnx.load(path))


def test_options_that_change_the_fold_decline():
    m = _two_blocks()
    assert batched.prepare(m, RULES - {batched.RULE}, frozenset(), True) is None
    assert batched.prepare(m, RULES, frozenset({"bn"}), True) is None


def test_an_unexpected_error_falls_back_to_the_rules(monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(bn_math, "fold_conv_batch", boom)
    m = _two_blocks()
    r = onnxfold.fuse(m)
    assert len(r.folded) == 2 and not r.refused
    assert "the batched fold failed" in caplog.text
    monkeypatch.undo()
    assert r.model.SerializeToString() == onnxfold.fuse(m).model.SerializeToString()


def test_batches_are_bounded(monkeypatch):
    """Weights are folded in float64 a batch at a time; splitting changes no bit."""
    m = chain(40)
    whole = onnxfold.fuse(m).model.SerializeToString()
    monkeypatch.setattr(batched, "_BATCH", 600)  # about one block's weight per batch
    assert onnxfold.fuse(m).model.SerializeToString() == whole


@pytest.mark.parametrize("seed", range(5))
def test_fold_conv_batch_is_the_one_at_a_time_math(seed):
    rng = np.random.default_rng(seed)
    weights, biases, params, eps, expect = [], [], [], [], []
    for _ in range(int(rng.integers(1, 6))):
        c = int(rng.integers(1, 9))
        w = rng.standard_normal((c, int(rng.integers(1, 4)), *rng.integers(1, 4, 2))
                                ).astype(np.float32)
        b = None if rng.random() < 0.5 else rng.standard_normal(c).astype(np.float32)
        p = (rng.uniform(0.1, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
             rng.standard_normal(c).astype(np.float32),
             np.exp(rng.standard_normal(c) * 3).astype(np.float32))
        e = float(np.float32(10.0 ** rng.uniform(-7, -2)))
        s, t = bn_math.bn_scale_shift(*p, e)
        w64, b64 = bn_math.fold_conv(w, b, s, t)
        expect.append((bn_math.cast_checked(w64, np.float32, "weight"),
                       bn_math.cast_checked(b64, np.float32, "bias")))
        weights.append(w.reshape(-1))
        biases.append(b)
        params.append(p)
        eps.append(e)
    w_all, b_all = bn_math.fold_conv_batch(weights, biases, params, eps, np.dtype(np.float32))
    assert w_all.tobytes() == b"".join(w.tobytes() for w, _ in expect)
    assert b_all.tobytes() == b"".join(b.tobytes() for _, b in expect)


def test_fold_conv_batch_says_none_when_not_finite():
    one = np.ones(2, np.float32)
    w = np.ones(2, np.float32)
    assert bn_math.fold_conv_batch([w], [None], [(one, one, one, -one)], [0.0],
                                   np.dtype(np.float32)) is None
    big = np.full(2, 3e38, np.float32)
    assert bn_math.fold_conv_batch([big], [None], [(one * 10, one, one, one)], [0.0],
                                   np.dtype(np.float32)) is None


def test_tensor_attribute_ops_are_what_onnx_defines():
    kinds = {AttributeProto.TENSOR, AttributeProto.TENSORS, AttributeProto.SPARSE_TENSOR,
             AttributeProto.SPARSE_TENSORS, AttributeProto.GRAPH, AttributeProto.GRAPHS}
    found = {s.name for s in onnx.defs.get_all_schemas_with_history()
             if s.domain in ("", "ai.onnx")
             and any(int(a.type.value) in kinds for a in s.attributes.values())}
    assert found == TENSOR_ATTR_OPS
