"""External data: weights in side files are read where they are, written back in the same layout
(or as asked), checked by path, and never read from outside the model's folder."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxfold
from onnxfold import modelio
from onnxfold.cli import main
from onnxfold.errors import OnnxfoldError
from onnxfold.fold import bn_math
from onnxfold.parity import check_parity
from tests import nested
from tests.builders import conv_bn_model, max_rel_error, ops
from tests.clitools import digest, listing, run_cli

# Paths opened (builtins.open, os.open) while armed: proof that a refused file is never read.
_OPENED: list[str] = []
_ARMED = [False]


def _audit(event: str, args: tuple) -> None:
    if _ARMED[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)

IN_FOLDER = "expected external data in a regular file inside the model's folder"
W_BYTES = 32 * 16 * 3 * 3 * 4  # the Conv weight of weights_model(): FLOAT 32x16x3x3





def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def aligned(n: int) -> int:
    return -(-n // 4096) * 4096


def weights_model() -> onnx.ModelProto:
    """X -> Conv -> BN -> Relu -> Add(offsets) -> Z: a Conv weight the fold rewrites (18 kB) and
    an addend it leaves alone (10 kB)."""
    m = conv_bn_model(cin=16, cout=32)
    rng = np.random.default_rng(7)
    offsets = rng.standard_normal((1, 32, 9, 9)).astype(np.float32)
    m.graph.initializer.append(numpy_helper.from_array(offsets, "offsets"))
    m.graph.node.append(helper.make_node("Add", ["Y", "offsets"], ["Z"], name="add"))
    m.graph.output[0].name = "Z"
    return m


def if_model() -> onnx.ModelProto:
    """Conv -> BN -> Relu -> If: the then-branch adds a 10 kB initializer of its own."""
    m = conv_bn_model(cin=16, cout=32)
    rng = np.random.default_rng(8)
    inner = numpy_helper.from_array(rng.standard_normal((1, 32, 9, 9)).astype(np.float32),
                                    "branch_offsets")
    out = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Add", ["Y", "branch_offsets"], ["t_out"])],
                               "then", [], [out("t_out", TensorProto.FLOAT, None)], [inner])
    else_g = helper.make_graph([helper.make_node("Identity", ["Y"], ["e_out"])],
                               "else", [], [out("e_out", TensorProto.FLOAT, None)])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    m.graph.node.append(helper.make_node("If", ["cond"], ["Z"], name="branch",
                                         then_branch=then_g, else_branch=else_g))
    m.graph.output[0].name = "Z"
    return m


def save_external(model: onnx.ModelProto, path: Path, location: str | None = None,
                  threshold: int = 1024) -> Path:
    """Save as onnx does: initializers of about `threshold` bytes or more in one data file
    beside the model."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location or f"{path.name}.data", size_threshold=threshold)
    return path


def tensor(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for _, t in modelio.tensors(m) if t.name == name)


def entries(path: Path, name: str) -> dict[str, str]:
    m = onnx.load(str(path), load_external_data=False)
    t = tensor(m, name)
    assert t.data_location == TensorProto.EXTERNAL, name
    return {e.key: e.value for e in t.external_data}


def set_entries(path: Path, name: str, pairs: list[tuple[str, str]]) -> None:
    """Rewrite one tensor's external_data entries in a saved model file."""
    m = onnx.load(str(path), load_external_data=False)
    t = tensor(m, name)
    del t.external_data[:]
    for key, value in pairs:
        e = t.external_data.add()
        e.key, e.value = key, value
    path.write_bytes(m.SerializeToString())


def test_round_trip_keeps_external_layout(capsys, tmp_path):
    original = weights_model()
    src = save_external(original, tmp_path / "m.onnx")
    data = tmp_path / "m.onnx.data"
    assert {entries(src, "W")["location"], entries(src, "offsets")["location"]} == {"m.onnx.data"}
    before = {p: (digest(p), p.stat().st_mtime_ns) for p in (src, data)}

    rc, out, err = run_cli(capsys, "fuse", src, "--report", tmp_path / "r.json")
    assert (rc, err) == (0, "")
    target, target_data = tmp_path / "m.folded.onnx", tmp_path / "m.folded.onnx.data"
    assert listing(tmp_path) == ["m.folded.onnx", "m.folded.onnx.data", "m.onnx", "m.onnx.data",
                                 "r.json"]
    assert "folded 1 of 1 BatchNormalization" in out
    assert "check: PASS" in out
    # W (rewritten by the fold) at 0, offsets (untouched, copied) at the next 4096 boundary.
    assert "\nexternal data: m.folded.onnx.data (2 tensors, 30.8 kB)\n" in out
    assert entries(target, "W") == {"location": "m.folded.onnx.data", "offset": "0",
                                    "length": str(W_BYTES)}
    assert entries(target, "offsets") == {"location": "m.folded.onnx.data", "offset": "20480",
                                          "length": "10368"}
    assert target_data.stat().st_size == 20480 + 10368
    small = onnx.load(str(target), load_external_data=False).graph.initializer
    assert [(t.name, t.data_location) for t in small if t.name == "b"] == [("b", 0)]
    assert {p: (digest(p), p.stat().st_mtime_ns) for p in (src, data)} == before

    onnx.checker.check_model(str(target), full_check=True)
    folded = onnx.load(str(target))
    assert ops(folded)["BatchNormalization"] == 0
    assert max_rel_error(original, folded) < 1e-5
    np.testing.assert_array_equal(numpy_helper.to_array(tensor(folded, "offsets")),
                                  numpy_helper.to_array(tensor(original, "offsets")))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert (rep["layout"], rep["external_data"]) == (
        "external", {"file": "m.folded.onnx.data", "tensors": 2, "bytes": 30848})


def test_same_input_same_bytes_model_and_data(capsys, tmp_path):
    src = save_external(weights_model(), tmp_path / "m.onnx")
    outs = []
    for k, sub in enumerate(("d1", "d2", "d1")):
        (tmp_path / sub).mkdir(exist_ok=True)
        out = tmp_path / sub / "x.onnx"
        rc, _, _ = run_cli(capsys, "fuse", src, "-o", out, "--force",
                           "--report", tmp_path / f"r{k}.json")
        assert rc == 0
        outs.append((digest(out), digest(tmp_path / sub / "x.onnx.data")))
    assert outs[0] == outs[1] == outs[2]
    assert (tmp_path / "r0.json").read_bytes() == (tmp_path / "r2.json").read_bytes()


def test_zero_runs_become_holes(capsys, tmp_path):
    """A data file with written zeros (no holes) gives a sparse output all the same."""
    m = weights_model()
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((1 << 20,), np.float32), "z"))
    m.graph.node.append(helper.make_node("Add", ["Z", "z_first"], ["Z2"], name="add2"))
    m.graph.node.insert(0, helper.make_node("Slice", ["z", "s0", "s1"], ["z_first"], name="cut"))
    for name, v in (("s0", 0), ("s1", 1)):
        m.graph.initializer.append(numpy_helper.from_array(np.array([v], np.int64), name))
    m.graph.output[0].name = "Z2"
    src = save_external(m, tmp_path / "m.onnx")
    data = tmp_path / "m.onnx.data"
    assert data.stat().st_blocks * 512 >= 4 << 20  # onnx wrote the 4 MiB of zeros
    rc, out, err = run_cli(capsys, "fuse", src)
    assert (rc, err) == (0, "")
    assert "check: PASS" in out
    assert entries(tmp_path / "m.folded.onnx", "z") == {
        "location": "m.folded.onnx.data", "offset": "32768", "length": str(4 << 20)}
    target_data = tmp_path / "m.folded.onnx.data"
    assert target_data.stat().st_size == 32768 + (4 << 20)
    assert target_data.stat().st_blocks * 512 < 1 << 20
    assert read_at(target_data, 32768, 4 << 20) == bytes(4 << 20)


def test_failed_check_writes_nothing(capsys, monkeypatch, tmp_path):
    """A fold that drops epsilon fails parity: exit 1, no model, no data file, no temp file."""
    original = bn_math.bn_scale_shift

    def drops_epsilon(scale, bias, mean, var, epsilon):
        return original(scale, bias, mean, var, 0.0)

    monkeypatch.setattr(bn_math, "bn_scale_shift", drops_epsilon)
    src = save_external(weights_model(), tmp_path / "m.onnx")
    before = listing(tmp_path)
    rc, out, err = run_cli(capsys, "fuse", src)
    assert rc == 1
    assert "check: FAIL" in out and "external data:" not in out
    assert err.rstrip().endswith("nothing written")
    assert listing(tmp_path) == before


def test_no_external_data_writes_one_file(capsys, tmp_path):
    original = weights_model()
    src = save_external(original, tmp_path / "m.onnx")
    rc, out, err = run_cli(capsys, "fuse", src, "--no-external-data", "--report", tmp_path / "r")
    assert (rc, err) == (0, "")
    assert listing(tmp_path) == ["m.folded.onnx", "m.onnx", "m.onnx.data", "r"]
    assert "check: PASS" in out
    assert "\nexternal data: none (every tensor inside the model file)\n" in out
    folded = onnx.load(str(tmp_path / "m.folded.onnx"), load_external_data=False)
    assert not modelio.has_external_data(folded)
    onnx.checker.check_model(folded, full_check=True)
    assert max_rel_error(original, folded) < 1e-5
    rep = json.loads((tmp_path / "r").read_text())
    assert (rep["layout"], rep["external_data"]) == ("inline", None)


def test_external_data_on_an_inline_input(capsys, tmp_path):
    original = weights_model()
    src = tmp_path / "m.onnx"
    src.write_bytes(original.SerializeToString())
    rc, out, _ = run_cli(capsys, "fuse", src, "-o", tmp_path / "inline.onnx")
    assert rc == 0 and "external data: none" in out
    rc, out, err = run_cli(capsys, "fuse", src, "--external-data")
    assert (rc, err) == (0, "")
    assert listing(tmp_path) == ["inline.onnx", "m.folded.onnx", "m.folded.onnx.data", "m.onnx"]
    assert "\nexternal data: m.folded.onnx.data (2 tensors, 30.8 kB)\n" in out
    target = tmp_path / "m.folded.onnx"
    onnx.checker.check_model(str(target), full_check=True)
    assert max_rel_error(original, onnx.load(str(target))) < 1e-5
    # The same tensors, whether the input kept them inside or beside it.
    save_external(original, tmp_path / "e.onnx")
    assert run_cli(capsys, "fuse", tmp_path / "e.onnx", "-o", tmp_path / "e2.onnx")[0] == 0
    assert digest(tmp_path / "e2.onnx.data") == digest(tmp_path / "m.folded.onnx.data")


def test_layout_flags_exclude_each_other(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["fuse", str(tmp_path / "m.onnx"), "--external-data", "--no-external-data"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_existing_data_file_needs_force(capsys, tmp_path):
    src = save_external(weights_model(), tmp_path / "m.onnx")
    old = tmp_path / "m.folded.onnx.data"
    old.write_bytes(b"keep me")
    before = listing(tmp_path)
    rc, out, err = run_cli(capsys, "fuse", src)
    assert (rc, out) == (2, "")
    assert err == (f"onnxfold: error: {old}: expected a path with no file yet (or --force), "
                   "found an existing file\n")
    assert listing(tmp_path) == before and old.read_bytes() == b"keep me"
    # The report may not be the data file either.
    rc, _, err = run_cli(capsys, "fuse", src, "--force", "--report", old)
    assert rc == 2
    assert err == (f"onnxfold: error: {old}: expected a path no other output of this run uses, "
                   f"found '{old}'\n")
    assert listing(tmp_path) == before
    rc, _, _ = run_cli(capsys, "fuse", src, "--force")
    assert rc == 0 and old.stat().st_size == 30848


@pytest.mark.parametrize("which", ["model", "data", "report"])
def test_no_output_is_an_input_data_file(capsys, tmp_path, which):
    """Even with --force: the input's data file is an input."""
    src = save_external(weights_model(), tmp_path / "m.onnx", location="out.onnx.data")
    data = tmp_path / "out.onnx.data"
    argv = {"model": ["-o", data], "data": ["-o", tmp_path / "out.onnx"],
            "report": ["-o", tmp_path / "x.onnx", "--report", data]}[which]
    before, data_digest = listing(tmp_path), digest(data)
    rc, out, err = run_cli(capsys, "fuse", src, "--force", *argv)
    assert (rc, out) == (2, "")
    assert err == (f"onnxfold: error: {data}: expected an output path other than the input, "
                   "found an external data file of the input\n")
    assert listing(tmp_path) == before and digest(data) == data_digest


@pytest.fixture
def hostile(tmp_path):
    """model/m.onnx with its data in model/m.onnx.data, and secret.bin outside the model's
    folder holding the very same bytes: reading it would "work", so only the checks stop it."""
    folder = tmp_path / "model"
    folder.mkdir()
    src = save_external(weights_model(), folder / "m.onnx")
    secret = tmp_path / "secret.bin"
    shutil.copyfile(folder / "m.onnx.data", secret)
    return src, secret


def _loc(location, offset="0", length=str(W_BYTES)):
    return lambda folder, secret: [("location", location(folder, secret) if callable(location)
                                    else location), ("offset", offset), ("length", length)]


def _symlink_file(folder: Path, secret: Path) -> str:
    (folder / "link.bin").symlink_to(secret)
    return "link.bin"


def _symlink_dir(folder: Path, secret: Path) -> str:
    (folder / "shared").symlink_to(secret.parent, target_is_directory=True)
    return "shared/secret.bin"


def _dir(folder: Path, secret: Path) -> str:
    (folder / "weights").mkdir()
    return "weights"


def _outside(folder: Path, secret: Path) -> str:
    return (f"resolves to '{os.path.realpath(secret)}' (through a symlink), "
            f"outside '{os.path.realpath(folder)}'")


HOSTILE = {
    "absolute": (_loc(lambda f, s: str(s)), IN_FOLDER, "an absolute path"),
    "dotdot": (_loc("../secret.bin"), IN_FOLDER, "a '..' component"),
    "sub-dotdot": (_loc("sub/../../secret.bin"), IN_FOLDER, "a '..' component"),
    "backslash-dotdot": (_loc("..\\secret.bin"), IN_FOLDER, "a '..' component"),
    "symlink-out": (_loc(_symlink_file), IN_FOLDER, _outside),
    "symlinked-folder": (_loc(_symlink_dir), IN_FOLDER, _outside),
    "missing": (_loc("nope.bin"), IN_FOLDER, "no such file"),
    "directory": (_loc(_dir), IN_FOLDER, "a directory"),
    "no-location": (lambda f, s: [("offset", "0")], IN_FOLDER, None),
    "offset-past-end": (_loc("m.onnx.data", offset="{size+1}"),
                        "expected external data inside its file", "offset {size+1} past its end "
                        "({size} bytes)"),
    "length-past-end": (_loc("m.onnx.data", offset="{size-100}"),
                        "expected external data inside its file",
                        f"offset {{size-100}} + length {W_BYTES} past its end ({{size}} bytes)"),
    "wrong-length": (_loc("m.onnx.data", length="100"),
                     f"expected {W_BYTES} bytes of external data (FLOAT 32x16x3x3)",
                     "length 100"),
    "negative-offset": (_loc("m.onnx.data", offset="-4"),
                        "expected external data offset and length as non-negative integers",
                        "offset '-4'"),
    "location-twice": (lambda f, s: [("location", "m.onnx.data"), ("location", "../secret.bin")],
                       "expected each external_data key at most once", None),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_location_is_refused_and_never_read(capsys, hostile, case):
    src, secret = hostile
    folder = src.parent
    size = (folder / "m.onnx.data").stat().st_size
    make, expected, found = HOSTILE[case]
    pairs = [(k, v.replace("{size+1}", str(size + 1)).replace("{size-100}", str(size - 100)))
             for k, v in make(folder, secret)]
    set_entries(src, "W", pairs)
    loc = dict(pairs).get("location", "")
    if callable(found):
        found = found(folder, secret)
    if found is not None:
        found = found.replace("{size+1}", str(size + 1)).replace("{size-100}", str(size - 100))
        found = found.replace("{size}", str(size))
    message = {
        "no-location": f"{IN_FOLDER}, found tensor 'W' with no location",
        "location-twice": f"{expected}, found tensor 'W' with key 'location' twice",
    }.get(case, f"{expected}, found tensor 'W' with location '{loc}': {found}")
    tree = src.parent.parent
    before = listing(tree)
    digests = {p: digest(p) for p in (src, folder / "m.onnx.data", secret)}
    for extra in ([], ["--dry-run"], ["--no-external-data", "--no-check"]):
        _OPENED.clear()
        _ARMED[0] = True
        try:
            rc, out, err = run_cli(capsys, "fuse", src, *extra)
        finally:
            _ARMED[0] = False
        assert (rc, out) == (2, "")
        assert err == f"onnxfold: error: {src}: {message}\n"
        assert listing(tree) == before
        assert {p: digest(p) for p in digests} == digests
        assert os.path.realpath(secret) not in _OPENED
        # Of the test's files only the model was opened: no data file, inside or out.
        assert [p for p in _OPENED if p.startswith(os.path.realpath(tree))] == [
            os.path.realpath(src)]


def test_if_subgraph_tensor_stays_external(capsys, tmp_path):
    original = if_model()
    src = save_external(original, tmp_path / "m.onnx")
    assert entries(src, "branch_offsets")["location"] == "m.onnx.data"
    rc, out, err = run_cli(capsys, "fuse", src)
    assert (rc, err) == (0, "")
    assert "folded 1 of 1 BatchNormalization" in out and "check: PASS" in out
    target = tmp_path / "m.folded.onnx"
    assert entries(target, "branch_offsets") == {
        "location": "m.folded.onnx.data", "offset": "20480", "length": "10368"}
    onnx.checker.check_model(str(target), full_check=True)
    folded = onnx.load(str(target))
    np.testing.assert_array_equal(numpy_helper.to_array(tensor(folded, "branch_offsets")),
                                  numpy_helper.to_array(tensor(original, "branch_offsets")))
    assert max_rel_error(original, folded) < 1e-5


def test_if_subgraph_location_is_checked_too(capsys, tmp_path):
    src = save_external(if_model(), tmp_path / "m.onnx")
    set_entries(src, "branch_offsets", [("location", "../m.onnx.data")])
    before = listing(tmp_path)
    rc, _, err = run_cli(capsys, "fuse", src)
    assert rc == 2
    assert err == (f"onnxfold: error: {src}: {IN_FOLDER}, found tensor 'branch_offsets' with "
                   "location '../m.onnx.data': a '..' component\n")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("make", [lambda: nested.if_model(), lambda: nested.if_model(True),
                                  nested.loop_model], ids=["if", "if-outer-weights", "loop"])
def test_folds_in_bodies_read_external_weights(capsys, tmp_path, make):
    """Every weight external (threshold 0), read where the body folds: the result is the same
    model, byte for byte, as from the inline input."""
    original = make()
    inline = tmp_path / "inline.onnx"
    inline.write_bytes(original.SerializeToString())
    src = save_external(original, tmp_path / "m.onnx", threshold=0)
    rc, out_a, _ = run_cli(capsys, "fuse", inline, "-o", tmp_path / "a.onnx")
    assert rc == 0
    rc, out_b, err = run_cli(capsys, "fuse", src, "-o", tmp_path / "b.onnx", "--no-external-data")
    assert (rc, err) == (0, "")
    assert "check: PASS" in out_b
    assert out_a.splitlines()[1:-1] == out_b.splitlines()[1:-1]  # all but paths and times
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "b.onnx")


def test_constant_node_with_external_value_is_read_in(capsys, tmp_path):
    """onnx can store Constant values externally too (convert_attribute): they are read at load;
    a data file only takes initializers, so this output keeps everything inside."""
    original = conv_bn_model(cin=16, cout=32, constant_nodes=True)
    m = onnx.ModelProto()
    m.CopyFrom(original)
    src = tmp_path / "c.onnx"
    onnx.save_model(m, str(src), save_as_external_data=True, location="c.onnx.data",
                    size_threshold=1024, convert_attribute=True)
    assert entries(src, "W")["location"] == "c.onnx.data"
    rc, out, err = run_cli(capsys, "fuse", src)
    assert (rc, err) == (0, "")
    assert "folded 1 of 1" in out and "check: PASS" in out
    assert "external data: none (every tensor inside the model file)" in out
    folded = onnx.load(str(tmp_path / "c.folded.onnx"), load_external_data=False)
    assert not modelio.has_external_data(folded)
    assert max_rel_error(original, folded) < 1e-5


def test_float64_external_model_checked_as_float32_copies(capsys, tmp_path):
    """onnxruntime cannot run float64 Conv: the float32 copies read the data in."""
    original = conv_bn_model(cin=16, cout=32, dtype=np.float64)
    src = save_external(original, tmp_path / "f64.onnx")
    rc, out, _ = run_cli(capsys, "fuse", src)
    assert rc == 0
    assert "check: PASS" in out and "float32 copies" in out
    assert "external data: f64.folded.onnx.data (1 tensor, 36.9 kB)" in out


def test_opset6_external_model_checked_on_conversions(capsys, tmp_path):
    """onnxruntime runs opset >= 7 only: the opset-7 conversions read the data in."""
    original = conv_bn_model(cin=16, cout=32, opset=6, ir=3, bn_attrs={"is_test": 1, "spatial": 1})
    src = save_external(original, tmp_path / "old.onnx")
    rc, out, err = run_cli(capsys, "fuse", src)
    assert (rc, err) == (0, "")
    assert "check: PASS" in out and "note: compared opset 7 conversions" in out
    assert "external data: old.folded.onnx.data (1 tensor, 18.4 kB)" in out
    onnx.checker.check_model(str(tmp_path / "old.folded.onnx"), full_check=True)


def test_api_reads_external_values_and_parity_takes_paths(tmp_path):
    original = weights_model()
    src = save_external(original, tmp_path / "m.onnx")
    m = modelio.load_model(src)
    w = tensor(m, "W")
    assert w.data_location == TensorProto.EXTERNAL and not w.raw_data  # still a reference
    np.testing.assert_array_equal(modelio.tensor_array(w, tmp_path),
                                  numpy_helper.to_array(tensor(original, "W")))
    with pytest.raises(OnnxfoldError) as e:
        modelio.tensor_array(w)
    assert str(e.value) == ("<model>: expected the model's folder to read external data from, "
                            "found tensor 'W' stored as external data and no folder given")
    assert check_parity(src, original).status == "pass"
    assert check_parity(str(src), src).status == "pass"
    rep = check_parity(original, m)
    assert (rep.status, rep.reason) == (
        "not-run", "the rewritten model has external data: check it by its file path")


# --- a model over protobuf's 2 GB limit -----------------------------------------------------

ROWS, COLS, BIG = 100_000, 2_000, 3
BIG_BYTES = ROWS * COLS * 4  # 800 MB of float32 zeros each


def big_model(folder: Path, dtype=np.float32) -> tuple[Path, int]:
    """Conv -> BN -> Relu beside three 800 MB zero tensors, each read by a Gather of its row 0.

    All weights sit in one data file: the zeros first (truncate makes them a hole, no disk),
    the Conv weight after them, past the 2 GiB offset. Returns the model path and W's offset."""
    m = conv_bn_model(cin=16, cout=32, dtype=dtype)
    g = m.graph
    w = tensor(m, "W")
    w_offset = BIG * BIG_BYTES
    data = folder / "big.onnx.data"
    with open(data, "wb") as f:
        f.truncate(w_offset)
        f.seek(w_offset)
        f.write(w.raw_data)

    def external(t: onnx.TensorProto, offset: int, length: int) -> None:
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", data.name), ("offset", offset), ("length", length)):
            e = t.external_data.add()
            e.key, e.value = key, str(value)

    external(w, w_offset, len(w.raw_data))
    w.ClearField("raw_data")
    g.initializer.append(helper.make_tensor("row", TensorProto.INT64, [1], [0]))
    for k in range(BIG):
        t = g.initializer.add()
        t.name, t.data_type = f"E{k}", TensorProto.FLOAT
        t.dims.extend([ROWS, COLS])
        external(t, k * BIG_BYTES, BIG_BYTES)
        g.node.append(helper.make_node("Gather", [f"E{k}", "row"], [f"G{k}"], name=f"gather{k}",
                                       axis=0))
        g.output.append(helper.make_tensor_value_info(f"G{k}", TensorProto.FLOAT, [1, COLS]))
    path = folder / "big.onnx"
    path.write_bytes(m.SerializeToString())
    return path, w_offset


@pytest.mark.slow
def test_model_over_2gb(capsys, tmp_path):
    src, w_offset = big_model(tmp_path)
    data = tmp_path / "big.onnx.data"
    w_bytes = read_at(data, w_offset, W_BYTES)
    stat = data.stat()
    model_digest = digest(src)

    rc, out, err = run_cli(capsys, "fuse", src, "--report", tmp_path / "r.json")
    assert (rc, err) == (0, "")
    assert "folded 1 of 1 BatchNormalization" in out
    assert "check: PASS" in out
    target, target_data = tmp_path / "big.folded.onnx", tmp_path / "big.folded.onnx.data"
    # Walk order: W (rewritten by the fold), then E0..E2 (copied), each at a 4096 boundary.
    expected, end = {}, 0
    for name, length in (("W", W_BYTES), *((f"E{k}", BIG_BYTES) for k in range(BIG))):
        expected[name] = {"location": target_data.name, "offset": str(aligned(end)),
                          "length": str(length)}
        end = aligned(end) + length
    for name, want in expected.items():
        assert entries(target, name) == want
    assert target_data.stat().st_size == end == 2_400_024_576
    assert target_data.stat().st_blocks * 512 < 1 << 20  # the zeros stayed holes
    assert "\nexternal data: big.folded.onnx.data (4 tensors, 2.4 GB)\n" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["external_data"] == {"file": target_data.name, "tensors": 4, "bytes": end}
    assert all(o["passed"] for o in rep["check"]["outputs"])
    assert [o["name"] for o in rep["check"]["outputs"]] == ["Y", "G0", "G1", "G2"]
    onnx.checker.check_model(str(target), full_check=True)
    folded = onnx.load(str(target), load_external_data=False)
    assert ops(folded) == {"Conv": 1, "Relu": 1, "Gather": 3}
    assert folded.ByteSize() < 10_000
    # The input is untouched.
    assert digest(src) == model_digest
    after = data.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_blocks) == (
        stat.st_size, stat.st_mtime_ns, stat.st_blocks)
    assert read_at(data, w_offset, W_BYTES) == w_bytes

    # Everything inside one protobuf would be over 2 GB: refused, nothing written.
    before = listing(tmp_path)
    other = tmp_path / "inline.onnx"
    rc, out, err = run_cli(capsys, "fuse", src, "-o", other, "--no-external-data")
    assert (rc, out) == (2, "")
    tensor_data = BIG * BIG_BYTES + W_BYTES + 32 * 4 + 8  # E0..E2, W, the Conv bias, row
    assert err == (f"onnxfold: error: {other}: expected a model under protobuf's 2 GB limit "
                   f"with every tensor inside it, found {tensor_data} bytes of tensor data: "
                   "use --external-data\n")
    assert listing(tmp_path) == before


@pytest.mark.slow
def test_model_over_2gb_that_onnxruntime_cannot_run(capsys, tmp_path):
    """float64 Conv: the float32 copies would need every weight in one protobuf. NOT RUN, and
    the report says why; the model is still written."""
    src, _ = big_model(tmp_path, dtype=np.float64)
    rc, out, err = run_cli(capsys, "fuse", src)
    assert (rc, err) == (0, "")
    # E0..E2, then W, b and the four BN parameters in float64, and row.
    tensor_data = BIG * BIG_BYTES + 2 * W_BYTES + 32 * 8 * 5 + 8
    check = next(ln for ln in out.splitlines() if ln.startswith("check:"))
    assert check.startswith("check: NOT RUN: onnxruntime cannot load the original model: ")
    assert check.endswith(f"; a float32 copy needs all {tensor_data} bytes of tensor data in one "
                          "protobuf, over its 2 GB limit")
    assert "\nexternal data: big.folded.onnx.data (4 tensors, 2.4 GB)\n" in out
    onnx.checker.check_model(str(tmp_path / "big.folded.onnx"), full_check=True)


def test_api_fuse_of_external_references_needs_the_folder(tmp_path):
    from tests.builders import conv_bn_model

    m = conv_bn_model()
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.data",
              size_threshold=0)  # leaves m holding references to m.data
    with pytest.raises(onnxfold.OnnxfoldError) as e:
        onnxfold.fuse(m)
    assert str(e.value) == ("<model>: expected weights in the model, or fuse(model, base_dir=<the "
                            "model file's folder>), found tensors stored as external data")
    assert len(onnxfold.fuse(m, base_dir=str(tmp_path)).folded) == 1
