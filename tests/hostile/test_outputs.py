"""Where the output goes: bad paths, a read-only folder, a full disk, and a process interrupted
or killed in the middle of its write. The target is always the old file or absent, never a
partial file or a model beside another run's data; the inputs never change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.builders import conv_bn_model
from tests.hostile.tools import REPO, Tree, assert_error, inproc, subproc
from tests.test_external_data import save_external, weights_model

NOT_WRITABLE = "an output location onnxfold can write"


def model(folder: Path, name: str = "m.onnx", **kw) -> Path:
    p = folder / name
    p.write_bytes(conv_bn_model(**kw).SerializeToString())
    return p


def test_output_is_a_directory(capsys, tmp_path):
    src = model(tmp_path)
    (tmp_path / "d").mkdir()
    tree = Tree(tmp_path)
    for argv in (["fuse", src, "-o", tmp_path / "d"], ["fuse", src, "--report", tmp_path / "d"],
                 ["check", src, src, "--report", tmp_path / "d"]):
        assert_error(inproc(capsys, *argv), tmp_path / "d", "an output file path", "a directory")
    tree.assert_unchanged()


def test_report_is_an_input(capsys, tmp_path):
    a, b = model(tmp_path, "a.onnx"), model(tmp_path, "b.onnx", seed=1)
    tree = Tree(tmp_path)
    for argv in (["check", a, b, "--report", b, "--force"], ["fuse", a, "--report", a, "--force"]):
        assert_error(inproc(capsys, *argv), argv[-2], "an output path other than the input",
                     "the input file itself")
    tree.assert_unchanged()


def test_report_folder_missing(capsys, tmp_path):
    src = model(tmp_path)
    tree = Tree(tmp_path)
    r = tmp_path / "nope" / "r.json"
    for argv in (["fuse", src, "--report", r], ["check", src, src, "--report", r]):
        assert_error(inproc(capsys, *argv), r, "a path in an existing folder",
                     f"no folder '{r.parent}'")
    tree.assert_unchanged()


def test_existing_report_needs_force(capsys, tmp_path):
    src = model(tmp_path)
    r = tmp_path / "r.json"
    r.write_text("keep me")
    tree = Tree(tmp_path)
    for argv in (["fuse", src, "--report", r], ["check", src, src, "--report", r]):
        assert_error(inproc(capsys, *argv), r, "a path with no file yet (or --force)",
                     "an existing file")
    tree.assert_unchanged()


def test_read_only_folder(tmp_path):
    """Refused before the work (it was an OSError traceback after the check). Root ignores file
    modes, so the process runs without CAP_DAC_OVERRIDE (tools.drop_dac_override)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    src = model(ro)
    other = model(tmp_path, "other.onnx")
    ro.chmod(0o555)
    try:
        tree = Tree(tmp_path)
        for argv, out in (
            (["fuse", src], ro / "m.folded.onnx"),
            (["fuse", other, "-o", ro / "x.onnx"], ro / "x.onnx"),
            (["fuse", other, "--dry-run", "--report", ro / "r.json"], ro / "r.json"),
            (["check", other, src, "--report", ro / "r.json"], ro / "r.json"),
        ):
            assert_error(subproc(*argv, no_dac=True), out, "a path in a folder onnxfold can write",
                         f"'{ro}' is not writable")
        tree.assert_unchanged()
    finally:
        ro.chmod(0o755)


def _sizes(tmp_path: Path) -> tuple[int, int]:
    """(folded model, report) sizes of model(): the file size limits sit between them."""
    src = model(tmp_path / "probe")
    run = subproc("fuse", src, "--report", src.parent / "r.json", "-q")
    assert run.rc == 0, run.err
    return (src.parent / "m.folded.onnx").stat().st_size, (src.parent / "r.json").stat().st_size


@pytest.fixture
def sizes(tmp_path):
    (tmp_path / "probe").mkdir()
    return _sizes(tmp_path)


def test_disk_full(tmp_path, sizes):
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as a full disk fails with
    ENOSPC: exit 2 naming the file, no temp file left, nothing in place."""
    model_size, report_size = sizes
    assert model_size < report_size
    work = tmp_path / "work"
    work.mkdir()
    src = model(work)
    ext = save_external(weights_model(), work / "e.onnx")
    data_size = (work / "e.onnx.data").stat().st_size
    tree = Tree(work)
    efbig = "file too large (EFBIG)"
    cases = [
        (["fuse", src], model_size - 1, work / "m.folded.onnx"),
        # The model fits and the report does not: the model must not be left alone.
        (["fuse", src, "--report", work / "r.json"], model_size + 100, work / "r.json"),
        (["fuse", ext], data_size - 1, work / "e.folded.onnx.data"),
        (["check", src, src, "--report", work / "r.json"], 100, work / "r.json"),
    ]
    for argv, limit, named in cases:
        assert_error(subproc(*argv, fsize=limit), named, NOT_WRITABLE, efbig)
        tree.assert_unchanged()


# --- interrupted and killed writes ------------------------------------------------------------

# point in the write -> the target model afterwards, when an older output was there (--force)
POINTS = {
    "temp-open": "old",  # a temp file exists, empty
    "temp-written": "old",  # the temp file is complete, not yet renamed
    "data-partial": "old",  # the external data temp holds its first tensor
    "data-renamed": "absent",  # the new data file is in place, the model not yet
}


def _external_pair(folder: Path) -> tuple[Path, Path]:
    """Two external-data models with different weights: a.onnx made the old output."""
    a = save_external(weights_model(), folder / "a.onnx")
    b_model = weights_model()
    for t in b_model.graph.initializer:
        t.raw_data = bytes(reversed(t.raw_data))  # other weights, same layout
    return a, save_external(b_model, folder / "b.onnx")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("point", list(POINTS))
def test_interrupted_write(capsys, tmp_path, point, sig):
    """A real process paused at `point` (ONNXFOLD_TEST_PAUSE), then signalled."""
    work = tmp_path / "work"
    work.mkdir()
    external = point.startswith("data-")
    if external:
        old_src, src = _external_pair(work)
    else:
        old_src, src = model(work, "a.onnx"), model(work, "b.onnx", seed=1)
    out = work / "out.onnx"
    assert inproc(capsys, "fuse", old_src, "-o", out, "-q").rc == 0
    old = Tree(work)
    marker = tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "ONNXFOLD_TEST_PAUSE": f"{point}:{marker}"}
    p = subprocess.Popen([sys.executable, "-m", "onnxfold", "fuse", src, "-o", out, "--force"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline, "never reached the pause point"
            time.sleep(0.01)
        p.send_signal(getattr(signal, sig))
        err = p.communicate(timeout=20)[1]
    finally:
        p.kill()
    left = set(Tree(work).files) - set(old.files)
    temps = {f for f in left if f.startswith(".out.onnx.") and f.endswith(".tmp")}
    if sig == "SIGINT":
        assert (p.returncode, err) == (130, "onnxfold: interrupted\n")
        assert temps == set()  # the writes cleaned up after themselves
    else:
        assert p.returncode == -signal.SIGKILL  # no cleanup possible: only hidden temps stay
    assert left - temps == set()
    now = Tree(work).digests
    for name in ("a.onnx", "b.onnx", "a.onnx.data", "b.onnx.data"):
        assert now.get(name) == old.digests.get(name)  # inputs untouched
    if POINTS[point] == "old":
        assert now["out.onnx"] == old.digests["out.onnx"]
        if external:
            assert now["out.onnx.data"] == old.digests["out.onnx.data"]
    else:
        assert "out.onnx" not in now  # never the old model beside the new data file
