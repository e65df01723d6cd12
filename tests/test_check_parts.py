"""The parts of onnxfold check on their own: comparison numbers, signatures, inputs, pictures."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxfold.errors import OnnxfoldError
from onnxfold.parity.compare import compare, cosine
from onnxfold.parity.images import letterbox_size, load_image, parse_image_arg
from onnxfold.parity.inputs import load_npz, make_feeds, parse_range
from onnxfold.parity.signature import pair, parse_map
from tests.builders import conv_bn_model

F = TensorProto.FLOAT


def test_compare_numbers():
    a = np.array([[1.0, -2.0], [0.0, 4.0]], np.float32)
    b = np.array([[1.0, -2.5], [0.0, 4.0]], np.float32)
    d = compare(a, b, "y", 0.1, atol=0.05, topk=2)
    assert (d.max_abs, d.mean_abs, d.ref_max) == (0.5, 0.125, 4.0)
    assert d.tolerance == pytest.approx(0.05 + 0.1 * 4.0)
    assert d.passed is False
    assert d.worst_index == (0, 1) and (d.worst_ref, d.worst_got) == (-2.0, -2.5)
    assert d.cosine == pytest.approx(np.dot(a.ravel(), b.ravel())
                                     / np.linalg.norm(a) / np.linalg.norm(b))
    assert (d.topk, d.topk_agree, d.topk_same_order) == (2, 1.0, True)  # 4.0 then 1.0 both sides


def test_topk_disagreement():
    a = np.array([0.9, 0.8, 0.1, 0.0])
    b = np.array([0.8, 0.9, 0.1, 0.85])
    d = compare(a, b, "scores", 1.0, topk=2)  # passes on error, but the ranking moved
    assert d.passed and (d.topk_agree, d.topk_same_order) == (0.5, False)


def test_cosine_edge_cases():
    z = np.zeros(3)
    assert cosine(z, z) == 1.0 and cosine(z, np.ones(3)) == 0.0
    assert cosine(np.array([1.0, np.nan]), np.array([2.0, np.nan])) == pytest.approx(1.0)


def _two_outputs(order=("p", "q"), dtype=F, names=("X",)):
    x = names[0]
    nodes = [helper.make_node("Relu", [x], ["p"]), helper.make_node("Neg", [x], ["q"])]
    outs = {"p": helper.make_tensor_value_info("p", dtype, [1, 2]),
            "q": helper.make_tensor_value_info("q", dtype, [1, 2])}
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(names[0], dtype, [1, 2])],
                          [outs[o] for o in order])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_signature_same():
    p = pair(_two_outputs(), _two_outputs(), "a.onnx", "b.onnx")
    assert p.inputs == [("X", "X")] and p.outputs == [("p", "p"), ("q", "q")]


def test_signature_permuted_outputs():
    b = _two_outputs(order=("q", "p"))
    with pytest.raises(OnnxfoldError) as e:
        pair(_two_outputs(), b, "a.onnx", "b.onnx")
    assert str(e.value) == (
        "b.onnx: expected output 0 named 'p' as in a.onnx (their order differs; pair them with "
        "--map or --positional), found 'q'")
    # Explicitly paired by name, the order no longer matters.
    assert pair(_two_outputs(), b, "a", "b", {"p": "p", "q": "q"}).outputs == [("p", "p"),
                                                                            ("q", "q")]
    assert pair(_two_outputs(), b, "a", "b", positional=True).outputs == [("p", "q"), ("q", "p")]


def test_signature_renamed_input_needs_map():
    b = _two_outputs(names=("images",))
    with pytest.raises(OnnxfoldError, match=r"b.onnx: expected an input 'X' as in a.onnx "
                                            r"\(or --map X=NAME, --positional\), found inputs "
                                            r"'images'"):
        pair(_two_outputs(), b, "a.onnx", "b.onnx")
    assert pair(_two_outputs(), b, "a", "b", parse_map(["X=images"])).inputs == [("X", "images")]


def test_signature_dtype_mismatch():
    with pytest.raises(OnnxfoldError) as e:
        pair(_two_outputs(), _two_outputs(dtype=TensorProto.FLOAT16), "a.onnx", "b.onnx")
    assert str(e.value) == ("b.onnx: expected input 'X' of float, rank 2 like 'X' in a.onnx, "
                            "found float16, rank 2")


def test_bad_map_and_range_specs():
    with pytest.raises(OnnxfoldError, match="--map: expected NAME_IN_A=NAME_IN_B, found 'x'"):
        parse_map(["x"])
    with pytest.raises(OnnxfoldError, match="--map: expected input or output names of a, found z"):
        pair(_two_outputs(), _two_outputs(), "a", "b", {"z": "p"})
    assert parse_range("images:-1:1.5") == ("images", (-1.0, 1.5))
    for bad in ("images:1:0", "images:0", ":0:1", "images:a:b", "x:0:inf"):
        with pytest.raises(OnnxfoldError, match="--range: expected NAME:LOW:HIGH"):
            parse_range(bad)


def test_feeds_ranges_and_given():
    m = conv_bn_model()
    feeds, _ = make_feeds(m, ranges={"X": (-3.0, -2.0)})
    assert feeds["X"].min() >= -3.0 and feeds["X"].max() < -2.0
    x = np.full((1, 4, 9, 9), 0.25, np.float32)
    assert make_feeds(m, given={"X": x})[0]["X"] is x
    with pytest.raises(OnnxfoldError) as e:
        make_feeds(m, given={"X": x.astype(np.float64)})
    assert str(e.value) == "input 'X': expected an array of float32, found float64 (shape " \
                           "[1, 4, 9, 9])"
    with pytest.raises(OnnxfoldError) as e:
        make_feeds(m, given={"X": x[:, :3]})
    assert str(e.value) == "input 'X': expected an array of shape 1x4x9x9, found 1x3x9x9"
    with pytest.raises(OnnxfoldError, match="--inputs/--image: expected a graph input name"):
        make_feeds(m, given={"Y": x})


def test_npz(tmp_path):
    p = tmp_path / "in.npz"
    np.savez(p, X=np.ones((1, 4, 9, 9), np.float32))
    assert list(load_npz(p)) == ["X"]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(OnnxfoldError, match=r"bad.npz: expected an .npz file of named input "
                                            r"arrays \(numpy.savez\), found"):
        load_npz(bad)
    with pytest.raises(OnnxfoldError, match="no such file"):
        load_npz(tmp_path / "missing.npz")


def test_letterbox_size_matches_darknet_rule():
    assert letterbox_size(640, 480, 416, 416) == (416, 312)
    assert letterbox_size(480, 640, 416, 416) == (312, 416)
    assert letterbox_size(100, 100, 416, 416) == (416, 416)


def test_load_image_letterbox_non_square(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    p = tmp_path / "wide.png"
    rgb = np.zeros((30, 60, 3), np.uint8)
    rgb[..., 0] = 255  # pure red picture, twice as wide as high
    pil.fromarray(rgb).save(p)
    x = load_image(p, [1, 3, 32, 32])
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    # 60x30 -> 32x16 in the middle: rows 8..23 are the picture, the rest is 0.5 grey.
    assert np.all(x[0, :, :8] == 0.5) and np.all(x[0, :, 24:] == 0.5)
    np.testing.assert_array_equal(x[0, 0, 8:24], 1.0)
    np.testing.assert_array_equal(x[0, 1:, 8:24], 0.0)
    y = load_image(p, [2, 3, 32, 32], resize="stretch")
    assert y.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(y[:, 0], 1.0)


def test_load_image_errors(tmp_path):
    pytest.importorskip("PIL.Image")
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a picture")
    with pytest.raises(OnnxfoldError, match=r"x.jpg: expected a picture Pillow can read"):
        load_image(bad, [1, 3, 8, 8])
    with pytest.raises(OnnxfoldError, match=r"expected an input of shape \[N, 3 or 1, H, W\]"):
        load_image(bad, [1, 8, 8])
    with pytest.raises(OnnxfoldError, match=r"--image: expected INPUT_NAME=PICTURE"):
        parse_image_arg("dog.jpg")


def test_bisect_names_the_perturbed_node():
    from onnxfold.parity.bisect import bisect
    from onnxfold.parity.run import session

    a = conv_bn_model(tail="Relu")
    b = onnx.ModelProto()
    b.CopyFrom(a)
    var = next(t for t in b.graph.initializer if t.name == "bn_var")
    v = onnx.numpy_helper.to_array(var).copy()
    v[2] *= 1.001
    var.CopyFrom(onnx.numpy_helper.from_array(v, "bn_var"))
    feeds, _ = make_feeds(a)

    def run(m, names):
        return session(m.SerializeToString()).run(names, feeds)

    r = bisect(a, b, run, run, 1e-6)
    assert r.compared == 2 and r.last_good == "conv_out"
    assert (r.first.tensor, r.first.ref_node, r.first.cand_node) == (
        "bn_out", "BatchNormalization 'bn'", "BatchNormalization 'bn'")
    assert r.first.diff.max_abs > 0
    assert bisect(a, a, run, run, 0.0).first is None
