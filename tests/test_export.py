"""`onnxfold export` without the export stack: graph preparation, refusals, pins, the lockfile.

The conversions and runtimes are exercised in tests/test_export_slow.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfold.cli import main
from onnxfold.errors import OnnxfoldError
from onnxfold.export import stack
from onnxfold.export.prepare import VERIFIED_OPS, prepare
from onnxfold.parity.run import run, session
from tests.export.models import all_ops_model, unverified_model, upsample_model

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "models" / "tiny-yolov2-backbone.onnx"


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_prepare_folds_and_rewrites_space_to_depth_exactly():
    m = all_ops_model()
    p = prepare(m, "all_ops.onnx")
    before = Counter(n.op_type for n in m.graph.node)
    after = Counter(n.op_type for n in p.model.graph.node)
    assert (p.bns, p.folded) == (3, 2)
    assert [n.name for n in p.model.graph.node if n.op_type == "BatchNormalization"] == [
        "bn_route"]  # after a Concat, read by a padded Conv: refused, converted as itself
    assert p.rewrites == ["SpaceToDepth 'reorg'"]
    assert after["SpaceToDepth"] == 0
    assert after["Reshape"] - before["Reshape"] == 2
    assert after["Transpose"] - before["Transpose"] == 1
    assert p.fold_check.status == "pass"
    # The rewrite only moves data: bit-identical outputs in onnxruntime.
    assert p.rewrite_check.status == "pass"
    assert [(o.name, o.max_abs) for o in p.rewrite_check.outputs] == [("grid", 0.0),
                                                                      ("boxes", 0.0)]
    onnx.checker.check_model(p.model, full_check=True)


def test_space_to_depth_rewrite_matches_the_spec_on_the_blocks():
    """Channel (bh*b + bw)*C + c of the output is x[c, h*b + bh, w*b + bw]."""
    p = prepare(all_ops_model(), "all_ops.onnx")
    g = p.model.graph
    # Cut the prepared graph at the rewritten node and compare with a numpy SpaceToDepth.
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(
            list(g.node), "cut", list(g.input),
            [onnx.helper.make_tensor_value_info("p2", onnx.TensorProto.FLOAT, None),
             onnx.helper.make_tensor_value_info("reorg", onnx.TensorProto.FLOAT, None)],
            list(g.initializer)),
        opset_imports=p.model.opset_import, ir_version=p.model.ir_version)
    x = np.random.default_rng(3).random((1, 3, 32, 32), np.float32)
    got = run(session(sub.SerializeToString()), {"images": x})
    a, y = got["p2"], got["reorg"]
    b, c = 2, a.shape[1]
    for bh in range(b):
        for bw in range(b):
            np.testing.assert_array_equal(y[0, (bh * b + bw) * c:(bh * b + bw + 1) * c],
                                          a[0, :, bh::b, bw::b])


def test_prepare_fixes_dynamic_dims_and_names_nodes():
    m = upsample_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for n in m.graph.node:
        n.name = ""
    p = prepare(m, "up.onnx", shapes={"images": [2, 3, 16, 16]})
    assert p.shapes == {"images": [2, 3, 16, 16]}
    dims = [d.dim_value for d in p.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 16, 16]
    names = [n.name for n in p.model.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_refuses_an_unverified_op_naming_the_node(tmp_path, capsys):
    src = tmp_path / "hardmax.onnx"
    onnx.save(unverified_model(), src)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "export", src, "-o", out)
    ops = ", ".join(sorted(VERIFIED_OPS))
    assert rc == 2
    assert err == (f"onnxfold: error: {src}: expected only ops onnxfold export verifies on every "
                   f"target ({ops}), found Hardmax (node 'prob')\n")
    assert list(tmp_path.iterdir()) == [src]


def test_refuses_a_custom_domain_op():
    m = unverified_model()
    m.graph.node[1].domain = "com.example"
    with pytest.raises(OnnxfoldError, match=r"found com\.example\.Hardmax \(node 'prob'\)$"):
        prepare(m, "m.onnx")


@pytest.mark.parametrize(("args", "message"), [
    (["--to", "tf,onnx"], "--to: expected a comma-separated list of tf, tflite, tfjs, "
                          "found 'tf,onnx'"),
    (["--to", "tf", "--fp16"], "--fp16: expected --to with tflite (it adds "
                               "model_float16.tflite), found --to tf"),
    (["--to", "tf,tflite", "--quantize", "uint8"],
     "--quantize: expected --to with tfjs (it quantizes the TF.js weights), found --to tf,tflite"),
])
def test_refuses_bad_arguments(tmp_path, capsys, args, message):
    rc, _, err = cli(capsys, "export", BUNDLED, "-o", tmp_path / "out", *args)
    assert (rc, err) == (2, f"onnxfold: error: {message}\n")
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_existing_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = cli(capsys, "export", BUNDLED, "-o", out)
    assert rc == 2
    assert err == (f"onnxfold: error: {out}: expected a folder that does not exist yet "
                   f"(or --force), found an existing folder\n")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_refuses_a_missing_model_and_a_missing_output(tmp_path, capsys):
    rc, _, err = cli(capsys, "export", tmp_path / "no.onnx", "-o", tmp_path / "out")
    assert (rc, err) == (2, f"onnxfold: error: {tmp_path / 'no.onnx'}: expected an ONNX model "
                            "(a serialized onnx.ModelProto), found no such file\n")
    rc, _, err = cli(capsys, "export", BUNDLED)
    assert (rc, err) == (2, "onnxfold: error: export: expected MODEL.onnx and -o OUTDIR, "
                            "found no -o OUTDIR\n")


@pytest.mark.skipif(importlib.util.find_spec("onnx2tf") is not None,
                    reason="the export stack is installed in this Python")
def test_missing_export_stack_says_what_to_install(tmp_path, capsys):
    rc, _, err = cli(capsys, "export", BUNDLED, "-o", tmp_path / "out")
    assert rc == 2
    assert err == (f"onnxfold: error: onnx2tf: expected onnx2tf in {sys.executable} for --to tf "
                   f"(install the export stack with: onnxfold export --install), "
                   f"found not installed\n")
    assert list(tmp_path.iterdir()) == []


def test_js_packages_pinned_and_locked():
    pkg = json.loads((stack.JS_DIR / "package.json").read_text())
    lock = json.loads((stack.JS_DIR / "package-lock.json").read_text())
    names = [f"@tensorflow/{n}" for n in stack.JS_PACKAGES]
    assert sorted(pkg["dependencies"]) == sorted(names)
    assert set(pkg["dependencies"].values()) == {"4.22.0"}  # exact pins, no ranges
    assert lock["packages"][""]["dependencies"] == pkg["dependencies"]
    for n in names:
        entry = lock["packages"][f"node_modules/{n}"]
        assert entry["version"] == "4.22.0"
        assert entry["integrity"].startswith("sha512-")
    assert "tfjs-node" not in json.dumps(lock)  # it downloads a native binary at install time
    assert pkg["devDependencies"] == {"playwright-core": stack.PLAYWRIGHT_CORE}
    assert lock["packages"][""]["devDependencies"] == pkg["devDependencies"]
    entry = lock["packages"]["node_modules/playwright-core"]
    assert entry["version"] == stack.PLAYWRIGHT_CORE and entry["integrity"].startswith("sha512-")
    assert "\"node_modules/playwright\"" not in json.dumps(lock)  # it downloads browsers


def test_readme_names_the_pins():
    text = (REPO / "README.md").read_text()
    for req in [*stack.ONNX2TF, *stack.TFJS]:
        assert req in text
    assert re.search(r"@tensorflow/tfjs-core.{0,80}4\.22\.0", text, re.S)


def test_prepare_rewrites_darknet_shortcut_sampling_exactly():
    """pj's shortcut between maps of different shape: its strided Slice and channel Pad become
    1x1 Convs with identity weights (onnx2tf applied them to the wrong axes): bit-identical."""
    from onnxfold.darknet import convert_darknet

    cfg = REPO / "tests" / "export" / "cfg" / "all-ops-pj-shortcut.cfg"
    m = convert_darknet(cfg, weights_seed=0, bn_eps="darknet").model
    p = prepare(m, str(cfg))
    assert p.rewrites == ["Slice 'shortcut2.sampled'", "Pad 'shortcut2.placed'",
                          "Slice 'shortcut4.sampled'"]
    after = Counter(n.op_type for n in p.model.graph.node)
    assert (after["Slice"], after["Pad"], after["Conv"]) == (0, 0, 4 + 3)
    sampled = next(n for n in p.model.graph.node if n.name == "shortcut2.sampled")
    assert [list(a.ints) for a in sampled.attribute if a.name == "strides"] == [[2, 2]]
    assert p.rewrite_check.status == "pass"
    assert [(o.name, o.max_abs) for o in p.rewrite_check.outputs] == [("output", 0.0)]
    onnx.checker.check_model(p.model, full_check=True)


@pytest.mark.parametrize(("ends", "steps", "rewritten"), [
    ([8, 32, 32], [1, 2, 2], True),
    ([8, 31, 32], [1, 2, 2], True),  # rows 0, 2, ..., 30: the same as to the end
    ([8, 30, 32], [1, 2, 2], False),  # stops before row 30: not a whole sampling
    ([8, 32, 32], [2, 2, 2], False),  # every other channel
])
def test_strided_slice_rewrite_only_when_it_samples_to_the_end(ends, steps, rewritten):
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
              (("st", [0, 0, 0]), ("en", ends), ("ax", [1, 2, 3]), ("sp", steps))]
    g = helper.make_graph(
        [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"], name="s")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    p = prepare(m, "s.onnx")
    assert p.rewrites == (["Slice 's'"] if rewritten else [])
    assert p.rewrite_check.status == "pass"
    assert all(o.max_abs == 0.0 for o in p.rewrite_check.outputs)
