""".weights files: 16- and 20-byte headers, exact sizes, and every malformed case refused."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxfold.darknet import convert_darknet, load_plan
from onnxfold.darknet.weights import read_weights
from onnxfold.errors import OnnxfoldError
from tests.darknet.helpers import write_cfg, write_weights

# conv 3->4 (3x3, BN): 4 biases + 3*4 BN + 108 weights = 124; conv 4->2 (1x1): 2 + 8 = 10
BODY = ("[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"
        "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n")
FLOATS = 134


@pytest.fixture
def cfg(tmp_path) -> Path:
    return write_cfg(tmp_path / "net.cfg", BODY)


def refusal(cfg: Path, weights: Path) -> str:
    with pytest.raises(OnnxfoldError) as e:
        convert_darknet(cfg, weights, head="raw")
    return str(e.value)


def test_layout_in_file_order(cfg):
    layout = load_plan(cfg, head="raw").layout()
    assert layout == [
        (0, "convolutional", [("biases", 4), ("scales", 4), ("rolling_mean", 4),
                              ("rolling_variance", 4), ("weights", 108)]),
        (1, "convolutional", [("biases", 2), ("weights", 8)]),
    ]


def test_arrays_land_where_darknet_reads_them(cfg, tmp_path):
    floats = np.arange(FLOATS, dtype=np.float32) + 1  # positive: valid variances
    w = read_weights(write_weights(tmp_path / "w.weights", floats),
                     load_plan(cfg, head="raw").layout())
    assert (w.major, w.minor, w.seen, w.header_bytes) == (0, 2, 1234, 20)
    assert w.arrays[0]["biases"].tolist() == [1, 2, 3, 4]
    assert w.arrays[0]["rolling_variance"].tolist() == [13, 14, 15, 16]
    assert w.arrays[0]["weights"][[0, -1]].tolist() == [17, 124]
    assert w.arrays[1]["biases"].tolist() == [125, 126]
    model = convert_darknet(cfg, tmp_path / "w.weights", head="raw").model
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["conv0.weight"].shape == (4, 3, 3, 3)
    assert inits["conv0.weight"][0, 0, 0].tolist() == [17, 18, 19]  # OIHW
    assert inits["conv1.bias"].tolist() == [125, 126]
    assert "conv0.bias" not in inits  # with BN the biases are beta
    assert inits["bn0.bias"].tolist() == [1, 2, 3, 4]


def test_16_byte_header_reads_the_same_floats(cfg, tmp_path):
    floats = np.random.default_rng(1).uniform(0.5, 1.5, FLOATS).astype(np.float32)
    new = convert_darknet(cfg, write_weights(tmp_path / "new.weights", floats, minor=2),
                          head="raw").model
    old_file = write_weights(tmp_path / "old.weights", floats, minor=1)
    assert old_file.stat().st_size == 16 + 4 * FLOATS
    assert read_weights(old_file, load_plan(cfg, head="raw").layout()).header_bytes == 16
    old = convert_darknet(cfg, old_file, head="raw").model
    assert [t.SerializeToString() for t in old.graph.initializer] == [
        t.SerializeToString() for t in new.graph.initializer]


def test_16_byte_header_on_yolov2_tiny_equals_the_20_byte_file(reference_weights, tmp_path):
    """The reference file rewritten with version 0.1 (4-byte seen): the same model."""
    w20 = reference_weights("yolov2-tiny")
    data = w20.read_bytes()
    major, minor, rev, seen = struct.unpack("<iiiQ", data[:20])
    assert (major, minor) == (0, 2)
    w16 = tmp_path / "old.weights"
    w16.write_bytes(struct.pack("<iiiI", 0, 1, rev, seen) + data[20:])
    cfg = Path(__file__).resolve().parents[2] / "models" / "yolov2-tiny.cfg"
    a, b = convert_darknet(cfg, w20).model, convert_darknet(cfg, w16).model
    for m in (a, b):
        del m.metadata_props[:]  # they record each file's sha256
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


@pytest.mark.parametrize(("floats", "found"), [
    (FLOATS - 1, f"{FLOATS - 1} floats (the file ends in layer 1 [convolutional] weights "
     f"(float 7 of 8)): {20 + 4 * (FLOATS - 1)} bytes"),
    (FLOATS + 1, f"{FLOATS + 1} floats: {20 + 4 * (FLOATS + 1)} bytes"),
    (FLOATS // 2, f"{FLOATS // 2} floats (the file ends in layer 0 [convolutional] weights "
     f"(float 51 of 108)): {20 + 4 * (FLOATS // 2)} bytes"),
    (0, "0 floats (the file ends in layer 0 [convolutional] biases (float 0 of 4)): 20 bytes"),
])
def test_wrong_float_count(cfg, tmp_path, floats, found):
    w = write_weights(tmp_path / "w.weights", floats)
    assert refusal(cfg, w) == (
        f"{w}: expected {FLOATS} float32 values after the 20-byte header (version 0.2.0), as "
        f"the cfg implies: {20 + 4 * FLOATS} bytes in all, found {found}")


def test_16_byte_header_one_float_short(cfg, tmp_path):
    w = write_weights(tmp_path / "w.weights", FLOATS - 1, minor=1)
    assert refusal(cfg, w) == (
        f"{w}: expected {FLOATS} float32 values after the 16-byte header (version 0.1.0), as "
        f"the cfg implies: {16 + 4 * FLOATS} bytes in all, found {FLOATS - 1} floats (the file "
        f"ends in layer 1 [convolutional] weights (float 7 of 8)): {16 + 4 * (FLOATS - 1)} bytes")


def test_stray_bytes(cfg, tmp_path):
    w = write_weights(tmp_path / "w.weights", FLOATS)
    w.write_bytes(w.read_bytes() + b"\0\0")
    assert refusal(cfg, w).endswith(f"found {FLOATS} floats and 2 stray bytes: "
                                    f"{20 + 4 * FLOATS + 2} bytes")


@pytest.mark.parametrize(("data", "found"), [
    (b"", "expected a darknet .weights file (a header of 16 or 20 bytes), found 0 bytes"),
    (struct.pack("<iii", 0, 2, 0), "expected a darknet .weights file (a header of 16 or 20 "
     "bytes), found 12 bytes"),
    (struct.pack("<iiii", 0, 2, 0, 0), "expected a 20-byte header (version 0.2), found 16 bytes"),
    (struct.pack("<iiiQ", 100000, 2, 0, 0), "expected a darknet .weights file whose header "
     "starts with version numbers in 0..99999, found major=100000, minor=2"),
    (struct.pack("<iiiQ", -1, 0, 0, 0), "expected a darknet .weights file whose header starts "
     "with version numbers in 0..99999, found major=-1, minor=0"),
])
def test_bad_headers(cfg, tmp_path, data, found):
    w = tmp_path / "w.weights"
    w.write_bytes(data)
    assert refusal(cfg, w) == f"{w}: {found}"


def test_not_finite_values(cfg, tmp_path):
    floats = np.ones(FLOATS, np.float32)
    floats[[30, 40]] = [np.nan, np.inf]
    w = write_weights(tmp_path / "w.weights", floats)
    assert refusal(cfg, w) == (f"{w}: expected finite float32 values, found nan in layer 0 "
                               "[convolutional] weights (float 14 of 108) (2 such values)")


def test_negative_running_variance(cfg, tmp_path):
    floats = np.ones(FLOATS, np.float32)
    floats[12 + 2] = -0.5  # rolling_variance of channel 2
    w = write_weights(tmp_path / "w.weights", floats)
    assert refusal(cfg, w) == (f"{w}: expected rolling_variance >= 0 in every batch-normalized "
                               "layer, found layer 0 channel 2: -0.5")


def test_missing_or_directory(cfg, tmp_path):
    assert refusal(cfg, tmp_path / "no.weights") == (
        f"{tmp_path / 'no.weights'}: expected a darknet .weights file, found no such file")
    assert refusal(cfg, tmp_path) == f"{tmp_path}: expected a darknet .weights file, found a " \
        "directory"


def test_size_is_checked_before_anything_large_is_read(tmp_path, monkeypatch):
    """A cfg asking for ~10^10 floats against a small file: refused from the file's size alone."""
    cfg = write_cfg(tmp_path / "huge.cfg", "[convolutional]\nfilters=4096\nsize=25\npad=1\n\n"
                    "[convolutional]\nfilters=1024\nsize=25\npad=1\n",
                    net="width=1\nheight=1\nchannels=3")
    w = write_weights(tmp_path / "w.weights", 1000)
    layout = load_plan(cfg, head="raw").layout()

    def forbidden(*args, **kwargs):
        raise AssertionError("read the whole file")

    monkeypatch.setattr(Path, "read_bytes", forbidden)
    monkeypatch.setattr(np, "fromfile", forbidden)
    with pytest.raises(OnnxfoldError, match=r"expected 2629125120 float32 values .* found 1000 "):
        read_weights(w, layout)


def test_model_is_valid_and_deterministic(cfg, tmp_path):
    w = write_weights(tmp_path / "w.weights", FLOATS)
    a = convert_darknet(cfg, w, head="raw").model
    b = convert_darknet(cfg, w, head="raw").model
    onnx.checker.check_model(a, full_check=True)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
