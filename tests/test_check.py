"""onnxfold check A B: end to end through the CLI and the API, and against Polygraphy's numbers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from onnxfold.cli import main
from onnxfold.parity import CheckOptions, check_parity
from onnxfold.parity.inputs import make_feeds
from tests.builders import conv_bn_model


def save(m: onnx.ModelProto, path) -> str:
    onnx.save(m, path)
    return str(path)


def perturbed(m: onnx.ModelProto, delta: float = 1e-3) -> onnx.ModelProto:
    """A copy with one scalar weight (channel 2, centre tap) moved by delta."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    t = next(t for t in out.graph.initializer if t.name == "W")
    a = numpy_helper.to_array(t).copy()
    a[2, 0, 1, 1] += delta
    t.CopyFrom(numpy_helper.from_array(a, "W"))
    return out


def plain_model() -> onnx.ModelProto:
    """conv_bn_model with unit variances: no near-dead channel whose large output would set
    max|ref| for the whole tensor (see README: the tolerance scales with max|ref|)."""
    m = conv_bn_model()
    v = next(t for t in m.graph.initializer if t.name == "bn_var")
    v.CopyFrom(numpy_helper.from_array(np.ones(6, np.float32), "bn_var"))
    return m


@pytest.fixture
def pair(tmp_path):
    m = conv_bn_model()
    return save(m, tmp_path / "a.onnx"), save(onnxfold.fuse(m).model, tmp_path / "b.onnx")


def test_identical_models_pass_with_zero_error(tmp_path, capsys):
    a = save(conv_bn_model(), tmp_path / "a.onnx")
    assert main(["check", a, a]) == 0
    rep = onnxfold.check(a, a)
    assert rep.status == "pass" and rep.trials == 3
    [d] = rep.outputs
    assert (d.max_abs, d.mean_abs, d.max_rel, d.cosine) == (0.0, 0.0, 0.0, 1.0)


def test_folded_model_passes(pair, capsys):
    assert main(["check", *pair]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"onnxfold check: {pair[0]} (reference) vs {pair[1]} (candidate)"
    assert "check: PASS" in out and "seed 0, 3 trials" in out


def test_perturbed_weight_fails_and_bisect_names_it(tmp_path, capsys):
    m = plain_model()
    a, b = save(m, tmp_path / "a.onnx"), save(perturbed(m), tmp_path / "b.onnx")
    assert main(["check", a, b, "--bisect"]) == 1
    out = capsys.readouterr().out
    assert "check: FAIL" in out
    assert "bisect: first tensor that differs: 'conv_out' (1 compared in order)" in out
    assert "  made by Conv 'conv' in the reference, Conv 'conv' in the candidate" in out
    rep = onnxfold.check(a, b, bisect=True)
    assert rep.bisect.first.tensor == "conv_out"
    assert rep.outputs[0].max_abs > rep.outputs[0].tolerance


def test_bisect_after_a_broken_fold_names_the_folded_conv(tmp_path):
    """A fold that forgot epsilon: the first differing tensor is the BN's output, now made by
    the Conv that took over its name."""
    m = conv_bn_model(epsilon=1e-2)
    folded = onnxfold.fuse(m).model
    bad = onnxfold.fuse(conv_bn_model(epsilon=1e-9)).model  # same weights, epsilon dropped
    rep = onnxfold.check(save(m, tmp_path / "a.onnx"), save(bad, tmp_path / "b.onnx"),
                         bisect=True)
    assert rep.status == "fail"
    assert (rep.bisect.first.tensor, rep.bisect.first.ref_node, rep.bisect.first.cand_node) == (
        "bn_out", "BatchNormalization 'bn'", "Conv 'conv'")
    assert onnxfold.check(tmp_path / "a.onnx", save(folded, tmp_path / "c.onnx")).status == "pass"


def test_permuted_outputs_fail_the_signature_check(tmp_path, capsys):
    m = conv_bn_model(tail=None)
    m.graph.output.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT,
                                                        ["n", "c", "h", "w"]))
    p = onnx.ModelProto()
    p.CopyFrom(m)
    p.graph.output[0].CopyFrom(m.graph.output[1])
    p.graph.output[1].CopyFrom(m.graph.output[0])
    a, b = save(m, tmp_path / "a.onnx"), save(p, tmp_path / "b.onnx")
    assert main(["check", a, b]) == 2
    assert capsys.readouterr().err == (
        f"onnxfold: error: {b}: expected output 0 named 'bn_out' as in {a} (their order "
        "differs; pair them with --map or --positional), found 'conv_out'\n")
    assert main(["check", a, b, "--map", "bn_out=bn_out", "--map", "conv_out=conv_out"]) == 0


def test_renamed_input_with_map_and_positional(tmp_path):
    m = conv_bn_model()
    r = onnx.ModelProto()
    r.CopyFrom(m)
    r.graph.input[0].name = "images"
    r.graph.node[0].input[0] = "images"
    a, b = save(m, tmp_path / "a.onnx"), save(r, tmp_path / "b.onnx")
    rep = onnxfold.check(a, b, mapping={"X": "images"})
    assert rep.status == "pass" and rep.mapping == {"X": "images"}
    assert onnxfold.check(a, b, positional=True).outputs[0].max_abs == 0.0


def test_dynamic_shapes(tmp_path, capsys):
    m = conv_bn_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    a = save(m, tmp_path / "a.onnx")
    rep = onnxfold.check(a, a, trials=1)
    assert rep.inputs == {"X": [1, 4, 1, 9]}
    assert rep.notes == ["input 'X' dim 0 ('batch') is dynamic: set to 1",
                         "input 'X' dim 2 ('h') is dynamic: set to 1"]
    assert main(["check", a, a, "--shape", "X:2x4x13x9", "--trials", "1"]) == 0
    assert "inputs X 2x4x13x9" in capsys.readouterr().out


def test_fp16_models_use_fp16_tolerance(tmp_path):
    m = conv_bn_model(dtype=np.float16)
    a, b = save(m, tmp_path / "a.onnx"), save(onnxfold.fuse(m).model, tmp_path / "b.onnx")
    rep = onnxfold.check(a, b)
    assert (rep.status, rep.precision, rep.rel_tol) == ("pass", "float16", 2e-2)
    # A correct fp16 fold: measured 2.4e-3 x max|ref|, well inside the 2e-2 allowed.
    assert 0 < rep.outputs[0].max_abs <= 5e-3 * rep.outputs[0].ref_max


def test_picture_input_letterboxed(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    m = conv_bn_model(cin=3, size=16)
    a, b = save(m, tmp_path / "a.onnx"), save(onnxfold.fuse(m).model, tmp_path / "b.onnx")
    assert main(["check", a, b, "--image", f"X={tmp_path / 'p.png'}"]) == 0
    out = capsys.readouterr().out
    assert "note: one trial, not 3: every input is given data" in out
    assert "inputs X 1x3x16x16" in out


def test_npz_inputs_and_integer_inputs(tmp_path):
    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2), "table")
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"])], "g",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])], [table])
    a = save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]),
             tmp_path / "a.onnx")
    rep = onnxfold.check(a, a, ranges={"idx": (0, 10)})
    assert rep.status == "pass" and rep.inputs == {"idx": [3]}
    np.savez(tmp_path / "in.npz", idx=np.array([9, 0, 3], np.int64))
    assert main(["check", a, a, "--inputs", str(tmp_path / "in.npz")]) == 0
    np.savez(tmp_path / "bad.npz", idx=np.array([9, 0, 3], np.int32))
    with pytest.raises(onnxfold.OnnxfoldError, match="expected an array of int64, found int32"):
        onnxfold.check(a, a, inputs=tmp_path / "bad.npz")


def test_report_json(pair, tmp_path):
    r = tmp_path / "r.json"
    assert main(["check", *pair, "--report", str(r), "--topk", "3", "-q"]) == 0
    first = r.read_bytes()
    doc = json.loads(first)
    assert doc["reference"] == pair[0] and doc["candidate"] == pair[1]
    assert doc["status"] == "pass" and doc["trials"] == 3 and doc["bisect"] is None
    assert doc["levels"] == {"reference": "disable", "candidate": "disable"}
    o = doc["outputs"][0]
    assert set(o) >= {"name", "max_abs", "mean_abs", "max_rel", "cosine", "worst_index",
                      "worst_ref", "worst_got", "tolerance", "passed", "topk", "topk_agree",
                      "trial"}
    assert main(["check", *pair, "--report", str(r), "--topk", "3"]) == 2  # needs --force
    assert main(["check", *pair, "--report", str(r), "--topk", "3", "--force", "-q"]) == 0
    assert r.read_bytes() == first  # deterministic


def test_exit_codes(pair, tmp_path, capsys):
    assert main(["check", pair[0], str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: expected an ONNX model" in capsys.readouterr().err
    m = conv_bn_model()
    m.graph.node[2].domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    odd = save(m, tmp_path / "odd.onnx")
    assert main(["check", odd, odd]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"onnxfold: error: {odd}: expected a pair of models onnxruntime can "
                          "run, found check not run: onnxruntime cannot load the reference model")
    assert main(["check", *pair, "--trials", "0"]) == 2


def test_optimization_levels_per_side(pair):
    rep = onnxfold.check(pair[0], pair[0], ref_opt_level="disable", opt_level="all")
    assert rep.levels == {"reference": "disable", "candidate": "all"}
    assert rep.status == "pass"  # ORT's own Conv+BN fusion is within tolerance too


def test_fuse_uses_the_same_checker(pair):
    """fuse's check is check_parity with one trial and the same tolerances."""
    ref, cand = onnx.load(pair[0]), onnx.load(pair[1])
    a = check_parity(ref, cand)
    b = check_parity(ref, cand, options=CheckOptions())
    assert a.outputs == b.outputs and a.trials == 1


def test_numbers_agree_with_polygraphy(pair):
    """Same pair, same inputs, same sessions: max and mean abs error equal Polygraphy's."""
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import SimpleCompareFunc

    from onnxfold.parity.run import session

    feeds, _ = make_feeds(onnx.load(pair[0]), seed=0)
    runners = [OnnxrtRunner(lambda p=p: session(p), name=f"r{i}") for i, p in enumerate(pair)]
    results = Comparator.run(runners, data_loader=[feeds])
    acc = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1.0))
    poly = next(iter(acc))[("r0", "r1")][0]["Y"]  # comparison, iteration, output
    ours = check_parity(pair[0], pair[1]).outputs[0]
    assert ours.max_abs == pytest.approx(float(poly.max_absdiff), rel=1e-12, abs=0)
    assert ours.mean_abs == pytest.approx(float(poly.mean_absdiff), rel=1e-9)
    assert ours.max_abs > 0
    assert ort.__version__  # both ran in this process's onnxruntime


def test_external_data_pair_and_opset_converted(tmp_path):
    """Any two models: external-data files run from their paths; an opset-converted copy."""
    from onnx import version_converter

    m = conv_bn_model()
    folded = onnxfold.fuse(m).model
    d = tmp_path / "ext"
    d.mkdir()
    for proto, name in ((m, "a"), (folded, "b")):
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)  # onnx.save moves the data out of the proto it is given
        onnx.save(copy, d / f"{name}.onnx", save_as_external_data=True,
                  location=f"{name}.data", size_threshold=0)
    rep = onnxfold.check(d / "a.onnx", d / "b.onnx")
    assert rep.status == "pass" and rep.outputs[0].max_abs > 0
    converted = save(version_converter.convert_version(m, 18), tmp_path / "c.onnx")
    rep = onnxfold.check(save(m, tmp_path / "a.onnx"), converted)
    assert rep.status == "pass" and rep.outputs[0].max_abs == 0.0
