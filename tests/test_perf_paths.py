"""The fast paths of issue 10, checked on structure and bytes (timing is never asserted here;
tools/bench measures it)."""

from __future__ import annotations

import gc
import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from onnxfold.fold.pipeline import fuse_file
from onnxfold.graph import _filter
from onnxfold.modelio import _to_array, paused_gc, set_tensor
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
