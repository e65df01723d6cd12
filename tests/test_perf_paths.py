"""The fast paths of issue 10, checked on structure and bytes (timing is never asserted here;
tools/bench measures it)."""

from __future__ import annotations

import gc
import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from onnxfold import modelio
from onnxfold.errors import OnnxfoldError
from onnxfold.fold.pipeline import fuse_file
from onnxfold.graph import _filter
from onnxfold.modelio import _to_array, load_model, paused_gc, set_tensor
from tools.bench.models import chain

# sha256 of chain(5000) folded by onnxfold before the speed work (commit 548fdaa), --no-check.
# chain() draws from numpy's PCG64 Generator with a fixed seed; the input's digest is checked
# first, so a numpy that draws differently fails there, not here.
CHAIN_5000_IN = "7c30e8dce21e55f01b8744870bccfe5ffa51da475b3131f68cf0c5a72517678c"
CHAIN_5000_OUT = "b3b6665b4d07de230d948f99fab60f54b0f111e810656ba9cc957f0a8c9a557f"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_deep_chain_folds_every_bn_with_the_same_bytes_as_before(tmp_path):
    src, out = tmp_path / "chain.onnx", tmp_path / "folded.onnx"
    src.write_bytes(chain(5000).SerializeToString(deterministic=True))
    assert _sha(src.read_bytes()) == CHAIN_5000_IN
    outcome = fuse_file(src, out, check=False)
    assert outcome.exit_code == 0
    assert (outcome.report["folded"], outcome.report["normalizations"]) == (5000, 5000)
    assert "BatchNormalization" not in outcome.report["ops_after"]
    assert _sha(out.read_bytes()) == CHAIN_5000_OUT


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape", [(), (3,), (0, 4), (2, 3, 1, 2)])
def test_set_tensor_writes_what_from_array_writes(dtype, shape):
    a = np.asarray(np.random.default_rng(0).normal(size=shape)).astype(dtype)
    if a.ndim == 4:
        a = a.transpose(1, 0, 2, 3)  # not C-contiguous: written in C order all the same
    t = TensorProto(name="old", doc_string="gone", float_data=[1.0, 2.0])
    set_tensor(t, a, "x")
    want = numpy_helper.from_array(a, "x")
    assert t.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    back = _to_array(want)
    assert back.dtype == a.dtype and back.shape == a.shape and np.array_equal(back, a)


def test_set_tensor_falls_back_for_other_dtypes():
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    t = TensorProto()
    set_tensor(t, a, "i")
    assert t == numpy_helper.from_array(a, "i")
    assert np.array_equal(_to_array(t), a)


def test_filter_removes_in_place_without_copying_the_rest():
    g = onnx.GraphProto()
    for i in range(6):
        g.node.add(name=f"n{i}", op_type="Relu")
    live = list(g.node)
    _filter(g.node, lambda n: n.name not in {"n1", "n4"})
    assert [n.name for n in g.node] == ["n0", "n2", "n3", "n5"]
    assert all(a is b for a, b in zip(g.node, [live[0], live[2], live[3], live[5]]))
    live[2].name = "renamed"  # the same message, not a copy
    assert g.node[1].name == "renamed"


def test_paused_gc_restores_the_collector():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def _big_conv_model(doc: bool = False) -> onnx.ModelProto:
    """Conv (a 2.4 MB weight, over the spill threshold) -> BN, and a small Conv -> BN."""
    from onnx import helper

    rng = np.random.default_rng(1)
    c = 256
    inits = [numpy_helper.from_array(rng.normal(size=(c, c, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(4, c, 1, 1)).astype(np.float32), "W2")]
    for p, n in (("bn", c), ("bn2", 4)):
        for k, v in (("s", rng.uniform(0.5, 1.5, n)), ("b", rng.normal(size=n)),
                     ("m", rng.normal(size=n)), ("v", rng.uniform(0.5, 2, n))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"{p}_{k}"))
    if doc:
        inits[0].doc_string = "kept after raw_data"
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["y"]),
             helper.make_node("Conv", ["y", "W2"], ["c2"]),
             helper.make_node("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"],
                              ["z"])]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", 1, [1, c, 4, 4])],
                          [helper.make_tensor_value_info("z", 1, [1, 4, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("layout", [None, True])
def test_spilled_and_streamed_output_is_what_serializing_gives(tmp_path, layout):
    """A big folded weight goes through the spill file and is streamed into the output (inline
    or external): the same bytes as folding in memory and serializing (the API path)."""
    from onnxfold import fuse
    from onnxfold.modelio import model_bytes, save_model, stage_external

    model = _big_conv_model()
    src = tmp_path / "m.onnx"
    save_model(model, src)
    out = tmp_path / "f.onnx"
    outcome = fuse_file(src, out, check=False, external_data=layout)
    assert outcome.exit_code == 0 and outcome.report["folded"] == 2
    folded = fuse(model).model
    if layout:
        (tmp_path / "want").mkdir()
        want = tmp_path / "want" / "f.onnx"
        stage_external(folded, want).commit()
        data = "f.onnx.data"
        assert out.with_name(data).read_bytes() == want.with_name(data).read_bytes()
        assert out.read_bytes() == want.read_bytes()
    else:
        assert out.read_bytes() == model_bytes(folded)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_streamed_inline_keeps_fields_after_raw_data(tmp_path):
    """write_streamed puts a streamed tensor's fields above raw_data (doc_string) after it, as
    protobuf orders them: the bytes of reading it in and serializing."""
    from onnxfold.modelio import (
        external_ref,
        inline_external,
        model_bytes,
        stage_external,
        write_streamed,
    )

    model = _big_conv_model(doc=True)
    ext = tmp_path / "e.onnx"
    stage_external(model, ext).commit()
    m = onnx.load(str(ext), load_external_data=False)
    assert m.graph.initializer[0].doc_string == "kept after raw_data"
    tmp = write_streamed(m, tmp_path / "s.onnx", lambda t: (
        external_ref(t, tmp_path, ext) if t.data_location == TensorProto.EXTERNAL else None))
    inline_external(m, tmp_path, ext)
    assert tmp.read_bytes() == model_bytes(m)


@pytest.mark.parametrize("where", ["node-name", "attribute-name", "initializer-doc"])
def test_utf8_of_a_big_model_is_checked_by_a_second_parse(tmp_path, monkeypatch, where):
    """Models of 5000+ nodes and initializers skip the Python walk unless the proto3 parse finds
    a bad string; then the walk names it, as for a small model."""
    m = chain(2000)  # 6000 nodes, 10000 initializers
    good = tmp_path / "good.onnx"
    good.write_bytes(m.SerializeToString())
    walked = []
    monkeypatch.setattr(modelio, "_not_utf8", lambda model: walked.append(1) or "")
    load_model(good)
    assert walked == []
    monkeypatch.undo()
    if where == "node-name":
        m.graph.node[4321].name = "QQQQ"
        found = "NodeProto.name b'\\xff\\xfeQQ'"
    elif where == "attribute-name":
        m.graph.node[4320].attribute[0].name = "QQQQ"
        found = "AttributeProto.name b'\\xff\\xfeQQ'"
    else:
        m.graph.initializer[9999].doc_string = "QQQQ"
        found = "TensorProto.doc_string b'\\xff\\xfeQQ'"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(m.SerializeToString().replace(b"QQQQ", b"\xff\xfeQQ"))
    with pytest.raises(OnnxfoldError) as e:
        load_model(bad)
    assert str(e.value) == f"{bad}: expected names and strings in UTF-8, found {found}"


@pytest.mark.parametrize("check", [True, False])
def test_a_folded_model_the_checker_refuses_is_not_written(tmp_path, monkeypatch, check):
    """The onnx checker's verdict on the folded model decides, with or without the parity
    check (the serialized model is not measured before it is written), and nothing is
    written."""
    from onnxfold.fold import pipeline
    from tests.builders import conv_bn_model

    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    src.write_bytes(conv_bn_model().SerializeToString())
    real = pipeline.fuse_in_place

    def broken(model, *a, **k):
        r = real(model, *a, **k)
        r.model.graph.node[0].input.append("X")  # a Conv with 4 inputs
        return r

    monkeypatch.setattr(pipeline, "fuse_in_place", broken)
    got = fuse_file(src, out, check=check)
    assert got.exit_code == 1
    assert got.error.startswith("the folded model fails onnx.checker (a bug in onnxfold): ")
    assert "input size 4" in got.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_inline_output_holds_its_folded_weights_and_is_fsynced_before_the_rename(
        tmp_path, monkeypatch):
    """From a single-file model to a single file: big folded weights are held in memory (no
    spill file written and read back), and the output is fsynced just before it is renamed
    into place (its bytes went to disk while the checker ran)."""
    import os
    from pathlib import Path

    from onnxfold.fold import pipeline
    from onnxfold.modelio import save_model

    src, out = tmp_path / "m.onnx", tmp_path / "f.onnx"
    save_model(_big_conv_model(), src)
    temps, events = [], []
    real_temp, real_fsync, real_replace = modelio._temp, pipeline.fsync_file, os.replace

    def temp(p):
        temps.append(p.name)
        return real_temp(p)

    def fsync(p):
        events.append(("fsync", Path(p).name))
        real_fsync(p)

    def replace(a, b):
        events.append(("replace", Path(a).name))
        real_replace(a, b)

    monkeypatch.setattr(modelio, "_temp", temp)
    monkeypatch.setattr(pipeline, "fsync_file", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert fuse_file(src, out, check=False).exit_code == 0
    assert temps == ["f.onnx"]  # the output's temp only
    assert len(events) == 2 and events[0][0] == "fsync" and events[1] == ("replace",
                                                                           events[0][1])
