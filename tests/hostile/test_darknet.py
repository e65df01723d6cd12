"""Hostile darknet cfg and .weights files through `onnxfold convert` (tests/darknet covers the
malformed cases one by one through the API; these extend them): huge lines and values, numbers
that ask for terabytes, weights for another network, a header from nowhere."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from tests.darknet.helpers import write_cfg, write_weights
from tests.hostile.tools import Tree, assert_error, inproc, subproc

# conv 3->4 (3x3, BN): 4 + 3*4 + 108 = 124 floats; conv 4->2 (1x1): 2 + 8 = 10
BODY = ("[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"
        "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n")
FLOATS = 134
CFG = "a darknet .cfg text file"


def test_50_mb_line_is_refused_by_size(capsys, tmp_path):
    cfg = tmp_path / "long.cfg"
    cfg.write_bytes(b"[net]\nwidth=8\nheight=8\nchannels=3\n# " + b"x" * (50 << 20) + b"\n"
                    + BODY.encode())
    tree = Tree(tmp_path)
    run = inproc(capsys, "convert", cfg, "--weights-seed", "0", "--head", "raw")
    assert_error(run, cfg, f"{CFG} (at most 16777216 bytes)", f"{cfg.stat().st_size} bytes")
    tree.assert_unchanged()


def test_15_mb_line_under_the_limit(capsys, tmp_path):
    """A comment of 15 MB converts as without it; a value of 8 MB is refused in one short
    line (it was the whole value, an 8 MB error line)."""
    cfg = write_cfg(tmp_path / "comment.cfg", "# " + "x" * (15 << 20) + "\n" + BODY)
    run = inproc(capsys, "convert", cfg, "--weights-seed", "0", "--head", "raw", "-q")
    assert (run.rc, run.err) == (0, "")
    value = write_cfg(tmp_path / "value.cfg", BODY.replace("filters=4", "filters=" + "9x" * 2**22))
    tree = Tree(tmp_path)
    run = inproc(capsys, "convert", value, "--weights-seed", "0", "--head", "raw")
    assert_error(run, f"{value}:8: [convolutional] layer 0, key 'filters'", "an integer",
                 "'9x9x9x", prefix=True)
    assert run.err.endswith(f"... ({2**23 + 2} characters)\n")
    assert len(run.err) < 1000
    tree.assert_unchanged()


def test_latin1_in_a_comment(capsys, tmp_path):
    """darknet reads bytes and would skip the comment; we read text and say where it is not."""
    cfg = tmp_path / "latin1.cfg"
    cfg.write_bytes(b"[net]\n# caf\xe9\nwidth=8\nheight=8\nchannels=3\n" + BODY.encode())
    tree = Tree(tmp_path)
    run = inproc(capsys, "convert", cfg, "--weights-seed", "0", "--head", "raw")
    assert_error(run, cfg, f"{CFG} in UTF-8 or ASCII", "byte 11: invalid continuation byte")
    tree.assert_unchanged()


def test_two_billion_filters(tmp_path):
    """Refused from the cfg before anything is read or made: with --weights-seed numpy tried to
    allocate 44.7 GiB (a traceback); with a file, its size alone would refuse it too."""
    cfg = write_cfg(tmp_path / "big.cfg", "[convolutional]\nfilters=2000000000\nsize=1\n"
                    "activation=leaky\n")
    weights = write_weights(tmp_path / "big.weights", 100)
    tree = Tree(tmp_path)
    for source in (["--weights-seed", "0"], [weights]):
        assert_error(subproc("convert", cfg, *source, "--head", "raw"),
                     f"{cfg}:6: [convolutional] layer 0",
                     "a network whose weights fit one ONNX file (2 GB)",
                     "8000000000 float32 weights up to this layer")
    tree.assert_unchanged()


def test_huge_input_and_layer_outputs(tmp_path):
    """Synthetic weights are calibrated by running each layer: a 30000x30000 input would have
    filled 10 GB, 50 million filters on an 8x8 input 12 GB."""
    wide = write_cfg(tmp_path / "wide.cfg", BODY, net="width=30000\nheight=30000\nchannels=3")
    deep = write_cfg(tmp_path / "deep.cfg", "[convolutional]\nfilters=50000000\nsize=1\n"
                     "activation=leaky\n")
    tree = Tree(tmp_path)
    assert_error(subproc("convert", wide, "--weights-seed", "0", "--head", "raw"),
                 f"{wide}:1: [net]", "an input of at most 1 GiB", "1x3x30000x30000")
    assert_error(subproc("convert", deep, "--weights-seed", "0", "--head", "raw"),
                 f"{deep}:6: [convolutional] layer 0",
                 "layer outputs of at most 1 GiB (onnxfold runs the network)", "1x50000000x8x8")
    tree.assert_unchanged()


def test_weights_of_another_network(capsys, tmp_path):
    """yolov2-mini's weights (tools/fuzz/seeds) given with a two-conv cfg."""
    cfg = write_cfg(tmp_path / "net.cfg", BODY)
    other = Path(__file__).resolve().parents[2] / "tools" / "fuzz" / "seeds" / "yolov2-mini.cfg"
    mini = tmp_path / "mini.cfg"
    mini.write_bytes(other.read_bytes())
    from onnxfold.darknet import load_plan

    floats = load_plan(mini).floats()
    weights = write_weights(tmp_path / "mini.weights", floats)
    tree = Tree(tmp_path)
    run = inproc(capsys, "convert", cfg, weights, "--head", "raw")
    assert_error(run, weights, f"{FLOATS} float32 values after the 20-byte header (version "
                 f"0.2.0), as the cfg implies: {20 + 4 * FLOATS} bytes in all",
                 f"{floats} floats: {20 + 4 * floats} bytes")
    tree.assert_unchanged()


def test_header_major_2_to_the_31(capsys, tmp_path):
    cfg = write_cfg(tmp_path / "net.cfg", BODY)
    weights = tmp_path / "w.weights"
    floats = np.ones(FLOATS, "<f4").tobytes()
    weights.write_bytes(struct.pack("<Iii", 2**31, 2, 0) + bytes(8) + floats)
    tree = Tree(tmp_path)
    run = inproc(capsys, "convert", cfg, weights, "--head", "raw")
    assert_error(run, weights, "a darknet .weights file whose header starts with version "
                 "numbers in 0..99999", "major=-2147483648, minor=2")
    tree.assert_unchanged()


def test_convert_disk_full_and_read_only(tmp_path):
    cfg = write_cfg(tmp_path / "net.cfg", BODY)
    tree = Tree(tmp_path)
    out = tmp_path / "net.onnx"
    assert_error(subproc("convert", cfg, "--weights-seed", "0", "--head", "raw", fsize=200), out,
                 "an output location onnxfold can write", "file too large (EFBIG)")
    tree.assert_unchanged()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_error(subproc("convert", cfg, "--weights-seed", "0", "--head", "raw", "-o",
                             ro / "x.onnx", no_dac=True), ro / "x.onnx",
                     "a path in a folder onnxfold can write", f"'{ro}' is not writable")
    finally:
        ro.chmod(0o755)


def test_integers_past_32_bits(capsys, tmp_path):
    """Found by tools/fuzz: stride=99999999999999999999 reached onnx.helper.make_attribute
    (ValueError: Value out of range, a traceback); darknet reads a C int with atoi."""
    for value in ("99999999999999999999", "2147483648"):
        cfg = write_cfg(tmp_path / f"s{len(value)}.cfg", f"[maxpool]\nsize=2\nstride={value}\n")
        run = inproc(capsys, "convert", cfg, "--weights-seed", "0", "--head", "raw")
        assert_error(run, f"{cfg}:8: [maxpool] layer 0, key 'stride'",
                     "an integer that fits darknet's 32-bit int", repr(value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s10.cfg", "s20.cfg"]  # no output
