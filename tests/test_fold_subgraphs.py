"""Folds inside If / Loop / Scan bodies and model-local functions, with outer-scope reads."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from onnxfold.fold.engine import op_counts
from onnxfold.parity import check_parity
from tests.builders import conv_bn_model
from tests.nested import F, body_of, function_model, if_model, loop_model, model_with, vi


def assert_parity(original: onnx.ModelProto, folded: onnx.ModelProto, tol: float = 1e-5):
    onnx.checker.check_model(folded, full_check=True)
    rep = check_parity(original, folded)
    assert rep.status == "pass", rep
    for d in rep.outputs:
        assert d.max_abs <= tol * d.ref_max, d


@pytest.mark.parametrize("outer_consts", [False, True], ids=["own-initializers", "outer-consts"])
def test_if_branches_fold(outer_consts):
    m = if_model(outer_consts)
    result = onnxfold.fuse(m)
    assert [(f.node, f.into, f.where) for f in result.folded] == [
        ("e_bn", "Conv 'e_conv'", "If 'if' else_branch"),
        ("t_bn", "Conv 't_conv'", "If 'if' then_branch"),
    ]
    assert result.refused == []
    assert op_counts(result.model) == {"Conv": 2, "If": 1, "Relu": 2}
    assert_parity(m, result.model)
    if outer_consts:
        # Each branch got its folded weight and bias as its own initializers; the outer
        # constants nothing reads any more are gone.
        assert [t.name for t in result.model.graph.initializer] == ["cond"]
        for branch in result.model.graph.node[0].attribute:
            p = branch.g.node[0].input[1][:2]
            assert sorted(t.name for t in branch.g.initializer) == sorted(
                [f"{p}W_folded", f"{p}b_folded"])


@pytest.mark.parametrize("run_branch", [True, False], ids=["folded-branch", "other-branch"])
def test_outer_weight_shared_with_outer_conv_is_copied(run_branch):
    """The branch's Conv and an outer Conv read one weight: the branch folds into a copy, the
    outer Conv keeps the original."""
    then, inits = body_of("t_", outer_consts=True)
    w = next(t for t in inits if t.name == "t_W")
    outer_conv = helper.make_node("Conv", ["X", "t_W"], ["o"], name="outer", pads=[1] * 4)
    cond = numpy_helper.from_array(np.array(run_branch), "cond")
    other = helper.make_graph([helper.make_node("Identity", ["X"], ["e_Y"])], "else", [],
                              [vi("e_Y")])
    node = helper.make_node("If", ["cond"], ["Z"], name="if", then_branch=then,
                            else_branch=other)
    m = model_with([outer_conv, node], [cond, *inits], ["o", "Z"])
    result = onnxfold.fuse(m)
    assert len(result.folded) == 1
    out = result.model.graph
    assert sorted(t.name for t in out.initializer) == ["cond", "t_W"]
    assert next(t for t in out.initializer if t.name == "t_W") == w
    assert_parity(m, result.model)


def test_conv_output_read_by_nested_subgraph_refused():
    """Inside a branch, the Conv output is also read by a nested If: refused, like at top level."""
    then, _ = body_of("t_")
    probe = helper.make_graph([helper.make_node("Identity", ["t_conv_out"], ["p"])], "probe",
                              [], [vi("p")])
    then.node.append(helper.make_node("If", ["cond"], ["t_probe"], name="nested",
                                      then_branch=probe, else_branch=probe))
    then.output.append(vi("t_probe"))
    other = helper.make_graph([helper.make_node("Identity", ["X"], ["e1"]),
                               helper.make_node("Identity", ["X"], ["e2"])], "else", [],
                              [vi(n) for n in ("e1", "e2")])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["Z", "P"], name="if", then_branch=then,
                            else_branch=other)
    m = model_with([node], [cond], ["Z", "P"])
    result = onnxfold.fuse(m)
    assert result.folded == []
    [r] = result.refused
    assert (r.node, r.code, r.where) == ("t_bn", "shared-output", "If 'if' then_branch")
    assert "If 'nested' also reads it inside a subgraph" in r.reason
    assert result.model.SerializeToString() == m.SerializeToString()


def test_bn_on_outer_value_refused():
    """A branch's BN normalizes a Conv output of the enclosing graph: nothing to fold into."""
    conv = conv_bn_model(tail=None)
    bn = conv.graph.node[1]
    body = helper.make_graph([bn], "then", [],
                             [vi("bn_out")])
    other = helper.make_graph([helper.make_node("Identity", ["conv_out"], ["e"])], "else", [],
                              [vi("e")])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["Z"], name="if", then_branch=body,
                            else_branch=other)
    m = model_with([conv.graph.node[0], node], [cond, *conv.graph.initializer], ["Z"])
    result = onnxfold.fuse(m)
    [r] = result.refused
    assert r.code == "no-producer"
    assert r.reason == ("BatchNormalization 'bn': its input 'conv_out' is defined in an "
                        "enclosing graph")
    assert_parity(m, result.model)


def test_loop_body_folds():
    """Loop: the state goes through Conv -> BN -> Relu three times."""
    m = loop_model()
    result = onnxfold.fuse(m)
    assert [(f.node, f.where) for f in result.folded] == [("l_bn", "Loop 'loop' body")]
    assert "BatchNormalization" not in op_counts(result.model)
    assert_parity(m, result.model)


def test_scan_body_folds():
    """Scan over a sequence of 2 images, each through Conv -> BN -> Relu."""
    body, _ = body_of("s_", x="frame")
    body.input.append(helper.make_tensor_value_info("frame", F, [1, 4, 9, 9]))
    scan = helper.make_node("Scan", ["XS"], ["Z"], name="scan", body=body, num_scan_inputs=1)
    xs = helper.make_tensor_value_info("XS", F, [2, 1, 4, 9, 9])
    m = model_with([scan], [], ["Z"], inputs=[xs], scan=True)
    result = onnxfold.fuse(m)
    assert [(f.node, f.where) for f in result.folded] == [("s_bn", "Scan 'scan' body")]
    assert_parity(m, result.model)


def test_nested_if_in_loop_where():
    then, _ = body_of("t_", x="state")
    other, _ = body_of("e_", x="state", seed=3)
    cond_in_loop = helper.make_node("If", ["c"], ["next"], name="inner", then_branch=then,
                                    else_branch=other)
    body = helper.make_graph(
        [cond_in_loop, helper.make_node("Identity", ["c"], ["c_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         vi("state")],
        [vi("c_out", 0, TensorProto.BOOL),
         vi("next")],
    )
    trip = numpy_helper.from_array(np.array(1, np.int64), "trip")
    loop = helper.make_node("Loop", ["trip", "", "X"], ["Z"], name="loop", body=body)
    m = model_with([loop], [trip], ["Z"])
    result = onnxfold.fuse(m)
    assert sorted(f.where for f in result.folded) == [
        "Loop 'loop' body > If 'inner' else_branch", "Loop 'loop' body > If 'inner' then_branch"]
    assert_parity(m, result.model)


def test_function_body_folds():
    m = function_model()
    result = onnxfold.fuse(m)
    assert [(f.node, f.into, f.where) for f in result.folded] == [
        ("bn", "Conv 'conv'", "function 'local.Block'")]
    f = result.model.functions[0]
    assert [n.op_type for n in f.node].count("BatchNormalization") == 0
    assert "BatchNormalization" not in op_counts(result.model)
    assert_parity(m, result.model)


def test_function_input_weight_refused():
    m = function_model(weights_as_inputs=True)
    result = onnxfold.fuse(m)
    [r] = result.refused
    assert (r.code, r.where) == ("not-constant", "function 'local.Block'")
    assert "'W' is a function input" in r.reason
    assert result.model.SerializeToString() == m.SerializeToString()


def test_function_attribute_ref_refused():
    """epsilon comes from the caller (1e-3 here): its value is not known inside the body."""
    m = function_model(eps_ref=True)
    result = onnxfold.fuse(m)
    [r] = result.refused
    assert r.code == "attribute-ref"
    assert r.reason == ("BatchNormalization 'bn': BatchNormalization 'bn' takes epsilon=@eps "
                        "from the function's caller")
    assert result.model.SerializeToString() == m.SerializeToString()
    onnx.checker.check_model(m, full_check=True)


def test_report_names_the_subgraph(tmp_path):
    from onnxfold.fold.pipeline import fuse_file

    src = tmp_path / "if.onnx"
    onnx.save(if_model(), src)
    text = fuse_file(src, dry_run=True).text
    assert "  t_bn -> Conv 't_conv' (Conv+BatchNormalization) [in If 'if' then_branch]" in text
    assert "  e_bn -> Conv 'e_conv' (Conv+BatchNormalization) [in If 'if' else_branch]" in text


def test_keep_names_a_node_inside_a_function(tmp_path):
    from onnxfold.fold.pipeline import fuse_file

    src = tmp_path / "f.onnx"
    onnx.save(function_model(), src)
    outcome = fuse_file(src, keep=["conv"], dry_run=True)
    assert outcome.report["refusals"][0]["code"] == "kept"
    assert outcome.report["refusals"][0]["where"] == "function 'local.Block'"
