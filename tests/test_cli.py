"""The `onnxfold fuse` command end to end: exit codes, messages, files written and not written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxfold
from onnxfold.fold import bn_math
from tests.builders import conv_bn_model, ops
from tests.clitools import digest, listing, run_cli

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "models" / "tiny-yolov2-backbone.onnx"
NOT_ONNX = "expected an ONNX model (a serialized onnx.ModelProto)"





def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def test_bundled_model_default_output(capsys, bundled):
    rc, out, err = run_cli(capsys, "fuse", bundled)
    assert (rc, err) == (0, "")
    target = bundled.parent / "tiny.folded.onnx"
    assert sorted(p.name for p in bundled.parent.iterdir()) == ["tiny.folded.onnx", "tiny.onnx"]
    folded = onnx.load(target)
    onnx.checker.check_model(folded, full_check=True)
    counts = ops(folded)
    assert counts["BatchNormalization"] == 0
    assert counts["Conv"] == 8
    assert "folded 7 of 7 BatchNormalization" in out
    assert "check: PASS" in out
    assert f"-> {target}" in out


def test_input_file_untouched(capsys, bundled):
    before = digest(bundled)
    mtime = bundled.stat().st_mtime_ns
    report = bundled.parent / "r.json"
    rc, _, _ = run_cli(capsys, "fuse", bundled, "-o", bundled.parent / "out.onnx",
                       "--report", report)
    assert rc == 0
    assert digest(bundled) == before
    assert bundled.stat().st_mtime_ns == mtime
    # --force rewrites the output, never the input.
    rc, _, _ = run_cli(capsys, "fuse", bundled, "-o", bundled.parent / "out.onnx", "--force")
    assert rc == 0
    assert digest(bundled) == before
    assert bundled.stat().st_mtime_ns == mtime


def test_same_input_gives_same_bytes(capsys, bundled):
    d = bundled.parent
    assert run_cli(capsys, "fuse", bundled, "-o", d / "a.onnx", "--report", d / "a.json")[0] == 0
    assert run_cli(capsys, "fuse", bundled, "-o", d / "b.onnx", "--report", d / "b.json")[0] == 0
    assert digest(d / "a.onnx") == digest(d / "b.onnx")
    a, b = json.loads((d / "a.json").read_text()), json.loads((d / "b.json").read_text())
    # The two reports differ only in the output path they name.
    assert (a.pop("output"), b.pop("output")) == (str(d / "a.onnx"), str(d / "b.onnx"))
    assert a == b
    # Same arguments again: the JSON report is byte-identical (no timings, no clocks).
    rc, _, _ = run_cli(capsys, "fuse", bundled, "-o", d / "a.onnx", "--force",
                       "--report", d / "c.json")
    assert rc == 0
    assert (d / "c.json").read_bytes() == (d / "a.json").read_bytes()
    assert digest(d / "a.onnx") == digest(d / "b.onnx")

    rep = json.loads((d / "c.json").read_text())
    assert rep["folded"] == 7
    assert rep["normalizations"] == 7
    assert rep["ops_before"]["BatchNormalization"] == 7
    assert rep["ops_after"].get("BatchNormalization", 0) == 0
    assert rep["ops_after"]["Conv"] == 8
    assert rep["check"]["status"] == "pass"
    assert rep["refusals"] == []


def test_fusing_a_fused_model_changes_nothing(capsys, bundled):
    d = bundled.parent
    first, second = d / "once.onnx", d / "twice.onnx"
    assert run_cli(capsys, "fuse", bundled, "-o", first)[0] == 0
    rc, out, err = run_cli(capsys, "fuse", first, "-o", second)
    assert (rc, err) == (0, "")
    assert "folded 0 of 0 BatchNormalization" in out
    assert "check: PASS" in out
    assert digest(second) == digest(first)


def test_existing_output_needs_force(capsys, bundled):
    target = bundled.parent / "out.onnx"
    target.write_bytes(b"keep me")
    rc, out, err = run_cli(capsys, "fuse", bundled, "-o", target)
    assert rc == 2
    assert out == ""
    assert err == (f"onnxfold: error: {target}: expected a path with no file yet (or --force), "
                   "found an existing file\n")
    assert target.read_bytes() == b"keep me"

    rc, out, _ = run_cli(capsys, "fuse", bundled, "-o", target, "--force")
    assert rc == 0
    assert ops(onnx.load(target))["BatchNormalization"] == 0


def _missing(tmp: Path, model: Path) -> tuple[list[object], Path]:
    p = tmp / "missing.onnx"
    return ["fuse", p], p


def _bad_file(name: str, content):
    """A case whose input file holds `content` (bytes, or a function of the bundled model's)."""

    def case(tmp: Path, model: Path) -> tuple[list[object], Path]:
        p = tmp / name
        p.write_bytes(content(model.read_bytes()) if callable(content) else content)
        return ["fuse", p], p

    return case


_not_onnx = _bad_file("hello.onnx", b"hello, I am not a model")
_truncated = _bad_file("half.onnx", lambda data: data[: len(data) // 2])
_empty = _bad_file("empty.onnx", b"")


def _no_folder(tmp: Path, model: Path) -> tuple[list[object], Path]:
    p = tmp / "nope" / "x.onnx"
    return ["fuse", model, "-o", p], p


def _output_is_input(tmp: Path, model: Path) -> tuple[list[object], Path]:
    return ["fuse", model, "-o", model], model


def _output_is_input_forced(tmp: Path, model: Path) -> tuple[list[object], Path]:
    return ["fuse", model, "-o", model, "--force"], model


def _output_is_input_spelled_differently(tmp: Path, model: Path) -> tuple[list[object], Path]:
    (tmp / "sub").mkdir()
    p = tmp / "sub" / ".." / model.name
    return ["fuse", model, "-o", p, "--force"], p


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (_missing, f"{NOT_ONNX}, found no such file"),
        (_not_onnx, f"{NOT_ONNX}, found bytes protobuf cannot decode ("),
        (_truncated, f"{NOT_ONNX}, found bytes protobuf cannot decode ("),
        (_empty, f"{NOT_ONNX}, found an empty file"),
        (_no_folder, "expected a path in an existing folder, found no folder '"),
        (_output_is_input, "expected an output path other than the input, "
                           "found the input file itself"),
        (_output_is_input_forced, "found the input file itself"),
        (_output_is_input_spelled_differently, "found the input file itself"),
    ],
    ids=["missing", "not-onnx", "truncated", "empty", "no-folder", "output-is-input",
         "output-is-input-forced", "output-is-input-other-spelling"],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, bundled, case, message):
    argv, named = case(tmp_path, bundled)
    model_digest = digest(bundled)
    before = listing(tmp_path)
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"onnxfold: error: {named}: ")
    assert message in err
    assert listing(tmp_path) == before
    assert digest(bundled) == model_digest


def test_failed_check_writes_no_model(capsys, monkeypatch, bundled):
    """A fold that drops epsilon breaks the near-dead channels: exit 1 and no output file."""
    original = bn_math.bn_scale_shift

    def drops_epsilon(scale, bias, mean, var, epsilon):
        return original(scale, bias, mean, var, 0.0)

    monkeypatch.setattr(bn_math, "bn_scale_shift", drops_epsilon)
    d = bundled.parent
    target, report = d / "out.onnx", d / "r.json"
    rc, out, err = run_cli(capsys, "fuse", bundled, "-o", target, "--report", report)
    assert rc == 1
    assert "check: FAIL" in out
    assert "-> (not written)" in out
    assert "parity check failed" in err
    assert err.rstrip().endswith("nothing written")
    assert not target.exists()
    assert sorted(p.name for p in d.iterdir()) == ["r.json", "tiny.onnx"]
    rep = json.loads(report.read_text())
    assert rep["check"]["status"] == "fail"
    assert rep["output"] is None
    assert not all(o["passed"] for o in rep["check"]["outputs"])

    # -q still shows the numbers, on stderr.
    rc, out, err = run_cli(capsys, "fuse", bundled, "-o", target, "-q")
    assert (rc, out) == (1, "")
    assert "check: FAIL" in err
    assert "parity check failed" in err
    assert not target.exists()


def test_quiet_and_no_check(capsys, tmp_path):
    model = save(conv_bn_model(), tmp_path / "m.onnx")
    rc, out, err = run_cli(capsys, "fuse", model, "-q")
    assert (rc, out, err) == (0, "", "")
    assert (tmp_path / "m.folded.onnx").is_file()

    rc, out, _ = run_cli(capsys, "fuse", model, "--force", "--no-check", "--report",
                         tmp_path / "r.json")
    assert rc == 0
    assert "check: skipped" in out
    assert "check: PASS" not in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["check"] is None
    assert rep["folded"] == 1


def test_shape_for_dynamic_input(capsys, tmp_path):
    m = conv_bn_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model = save(m, tmp_path / "dyn.onnx")
    report = tmp_path / "r.json"

    rc, out, _ = run_cli(capsys, "fuse", model, "-o", tmp_path / "a.onnx", "--report", report)
    assert rc == 0
    assert "dynamic: set to 1" in out
    rep = json.loads(report.read_text())
    assert rep["check"]["inputs"] == {"X": [1, 4, 9, 9]}
    assert any("dynamic: set to 1" in n for n in rep["check"]["notes"])

    rc, out, _ = run_cli(capsys, "fuse", model, "-o", tmp_path / "b.onnx", "--report", report,
                         "--force", "--shape", "X:2x4x9x9")
    assert rc == 0
    assert "dynamic: set to 1" not in out
    rep = json.loads(report.read_text())
    assert rep["check"]["inputs"] == {"X": [2, 4, 9, 9]}
    assert rep["check"]["status"] == "pass"

    before = listing(tmp_path)
    rc, out, err = run_cli(capsys, "fuse", model, "-o", tmp_path / "c.onnx", "--shape", "X:abc")
    assert (rc, out) == (2, "")
    assert err == ("onnxfold: error: --shape: expected NAME:D1xD2x... (e.g. images:1x3x416x416), "
                   "found 'X:abc'\n")
    assert listing(tmp_path) == before


def test_float64_model_is_checked_as_float32_copies(capsys, tmp_path):
    model = save(conv_bn_model(dtype=np.float64), tmp_path / "f64.onnx")
    rc, out, _ = run_cli(capsys, "fuse", model, "--report", tmp_path / "r.json")
    assert rc == 0
    assert "folded 1 of 1 BatchNormalization" in out
    assert "check: PASS" in out
    assert "float32 copies" in out  # never a silent pass on a model ORT could not run
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["check"]["precision"] == "float64"
    assert any("float32 copies" in n for n in rep["check"]["notes"])
    folded = onnx.load(tmp_path / "f64.folded.onnx")
    assert {t.data_type for t in folded.graph.initializer} == {TensorProto.DOUBLE}


def test_refused_fold_is_reported(capsys, tmp_path):
    m = conv_bn_model()
    m.graph.output.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None))
    model = save(m, tmp_path / "shared.onnx")
    rc, out, _ = run_cli(capsys, "fuse", model, "--report", tmp_path / "r.json")
    assert rc == 0
    assert "folded 0 of 1 BatchNormalization" in out
    assert "shared-output" in out
    assert "check: PASS" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [r["code"] for r in rep["refusals"]] == ["shared-output"]
    assert ops(onnx.load(tmp_path / "shared.folded.onnx"))["BatchNormalization"] == 1


def test_report_path_never_clobbers_input_output_or_existing_file(capsys, bundled):
    """--report obeys the output rules: not the input, not the model output, --force to replace."""
    before = digest(bundled)
    out = bundled.parent / "out.onnx"
    cases = [
        (bundled, [], "expected an output path other than the input, found the input file itself"),
        (out, [], f"expected a path no other output of this run uses, found '{out}'"),
    ]
    old = bundled.parent / "old.json"
    old.write_text("old")
    cases.append((old, [], "expected a path with no file yet (or --force), found an existing file"))
    for report, extra, message in cases:
        listing = sorted(p.name for p in bundled.parent.iterdir())
        rc, _, err = run_cli(capsys, "fuse", bundled, "-o", out, "--report", report, *extra)
        assert rc == 2
        assert err == f"onnxfold: error: {report}: {message}\n"
        assert digest(bundled) == before
        assert sorted(p.name for p in bundled.parent.iterdir()) == listing
    assert old.read_text() == "old"
    rc, _, _ = run_cli(capsys, "fuse", bundled, "-o", out, "--report", old, "--force")
    assert rc == 0 and json.loads(old.read_text())["folded"] == 7


def test_shape_names_checked_even_without_check(capsys, tmp_path):
    model = save(conv_bn_model(), tmp_path / "m.onnx")
    rc, _, err = run_cli(capsys, "fuse", model, "--no-check", "--shape", "Nope:1x2")
    assert rc == 2
    assert err == "onnxfold: error: --shape: expected a graph input name (X), found Nope\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_console_script_and_module_entry_points(tmp_path):
    eps = [e for e in entry_points(group="console_scripts") if e.name == "onnxfold"]
    assert [e.value for e in eps] == ["onnxfold.cli:main"]
    script = Path(sysconfig.get_path("scripts")) / "onnxfold"
    assert script.is_file(), f"no console script at {script}"
    version = f"onnxfold {onnxfold.__version__}\n"
    assert version == "onnxfold 0.1.0\n"

    for cmd in ([str(script)], [sys.executable, "-m", "onnxfold"]):
        p = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
        assert (p.returncode, p.stdout) == (0, version), p.stderr

    model = save(conv_bn_model(), tmp_path / "m.onnx")
    p = subprocess.run([str(script), "fuse", str(model)], capture_output=True, text=True,
                       timeout=120)
    assert (p.returncode, p.stderr) == (0, "")
    assert "folded 1 of 1 BatchNormalization" in p.stdout
    assert ops(onnx.load(tmp_path / "m.folded.onnx"))["BatchNormalization"] == 0

    # The exit code of main() is the process's exit code.
    p = subprocess.run([str(script), "fuse", str(tmp_path / "missing.onnx")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "found no such file" in p.stderr


def _shell_blocks(markdown: str) -> list[list[str]]:
    """Command lines of each ```sh block: comments, blanks and continuations handled."""
    blocks = []
    for body in re.findall(r"^```(?:sh|bash|shell)[ \t]*\n(.*?)^```", markdown, re.M | re.S):
        joined = re.sub(r"\\\n\s*", "", body)
        lines = [ln.strip().removeprefix("$ ") for ln in joined.splitlines()]
        blocks.append([ln for ln in lines if ln and not ln.startswith("#")])
    return blocks


def test_readme_commands_are_what_ci_runs():
    blocks = _shell_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2, "README needs a ```sh block for the main job and one for the tests"
    main_job, tests = blocks[0], blocks[1]
    assert main_job and tests
    assert any("onnxfold fuse" in ln for ln in main_job), main_job
    for ln in main_job:
        for word in ln.split():
            if word.startswith("models/"):
                assert (REPO / word).is_file(), f"the README's main job needs {word}"
    assert any("pytest" in ln for ln in tests), tests
    ci = {ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()}
    for ln in tests:
        assert ln in ci, f"the README's test command is not a line of .ci/run: {ln}"
    for ln in main_job:
        assert ln in ci, f"the README's main job is not a line of .ci/run: {ln}"
