"""fuse --dry-run, --only/--skip, --keep and --list-rules."""

from __future__ import annotations

import json

import onnx

from tests.builders import ops
from tests.test_cli import digest, listing, run_cli

RULES = ["Conv+BatchNormalization", "ConvTranspose+BatchNormalization",
         "Gemm+BatchNormalization", "MatMul+BatchNormalization", "ScaleLayer",
         "BatchNormalization+Conv", "BatchNormalization+Gemm"]


def test_list_rules(capsys):
    rc, out, err = run_cli(capsys, "fuse", "--list-rules")
    assert (rc, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()] == RULES


def test_dry_run_writes_nothing_and_lists_folds(capsys, bundled):
    (bundled.parent / "tiny.folded.onnx").write_bytes(b"existing")  # no --force needed
    before, model_digest = listing(bundled.parent), digest(bundled)
    rc, out, _ = run_cli(capsys, "fuse", bundled, "--dry-run")
    assert rc == 0
    assert listing(bundled.parent) == before and digest(bundled) == model_digest
    assert "-> (dry run: nothing written)" in out
    assert "would fold 7 of 7 BatchNormalization" in out
    assert "  bn3 -> Conv 'conv3' (Conv+BatchNormalization)" in out
    assert "check: skipped" in out


def test_keep_leaves_named_nodes(capsys, bundled):
    out_path, rep_path = bundled.parent / "k.onnx", bundled.parent / "k.json"
    rc, out, _ = run_cli(capsys, "fuse", bundled, "-o", out_path, "--keep", "bn3,conv5",
                         "--report", rep_path)
    assert rc == 0 and "check: PASS" in out
    assert ops(onnx.load(out_path))["BatchNormalization"] == 2
    rep = json.loads(rep_path.read_text())
    assert [(r["node"], r["code"]) for r in rep["refusals"]] == [("bn3", "kept"), ("bn5", "kept")]
    assert rep["refusals"][1]["reason"] == "BatchNormalization 'bn5': Conv 'conv5' is kept (--keep)"


def test_only_and_skip_select_rules(capsys, bundled):
    for flag in (["--only", "Gemm+BatchNormalization,MatMul+BatchNormalization"],
                 ["--skip", "Conv+BatchNormalization"]):
        rc, out, _ = run_cli(capsys, "fuse", bundled, "--dry-run", *flag)
        assert rc == 0
        assert "would fold 0 of 7 BatchNormalization" in out
        assert "no-producer (7)" in out


def test_unknown_names_exit_2(capsys, bundled):
    before = listing(bundled.parent)
    cases = [
        (["--keep", "bn3,nope"], "onnxfold: error: --keep: expected names of nodes in the model, "
                                 "found nope\n"),
        (["--only", "Conv+BN"], "onnxfold: error: --only/--skip: expected a rule name "
                                f"({', '.join(RULES)}), found 'Conv+BN'\n"),
        (["--skip", "x"], "found 'x'\n"),
    ]
    for extra, message in cases:
        rc, out, err = run_cli(capsys, "fuse", bundled, *extra)
        assert rc == 2 and out == ""
        assert err.endswith(message), err
    rc, _, err = run_cli(capsys, "fuse")
    assert rc == 2 and "expected a model path" in err
    assert listing(bundled.parent) == before
