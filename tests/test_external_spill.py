"""The spill file becomes the output's data file when its folded tensors already sit where the
data file puts them: same bytes as writing them all afresh, and the same cleanup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxfold import fuse
from onnxfold.fold.pipeline import fuse_file
from onnxfold.modelio import Spill, save_model, stage_external
from tests.builders import conv_bn_model

rng = np.random.default_rng(3)
A = rng.normal(size=(300, 100)).astype(np.float32)  # 120,000 bytes: not a multiple of 4096
B = np.concatenate([np.zeros(1 << 18, np.float32), rng.normal(size=999).astype(np.float32)])
C = rng.normal(size=(5000,)).astype(np.float32)


def _model(arrays: list[tuple[str, np.ndarray]]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(a, n) for n, a in arrays]
    return helper.make_model(helper.make_graph([], "g", [], [], inits))


def _staged(folder: Path, model: onnx.ModelProto, spill: Spill | None = None):
    folder.mkdir(exist_ok=True)
    staged = stage_external(model, folder / "m.onnx", None, spill)
    return staged


def _reference(tmp_path: Path, arrays) -> tuple[bytes, bytes, int]:
    staged = _staged(tmp_path / "want", _model(arrays))
    staged.commit()
    staged.discard()
    data = staged.data_file
    return (tmp_path / "want" / "m.onnx").read_bytes(), data.read_bytes(), data.stat().st_blocks


def _spilled(tmp_path: Path, arrays, put: list[str], drop: tuple[str, ...] = ()):
    """The model of `arrays` with those named in `put` spilled in that order, less `drop`."""
    (tmp_path / "got").mkdir()
    spill = Spill(tmp_path / "got" / "m.onnx", to_data=True)
    model = _model(arrays + [(n, np.full(3000, 7, np.float32)) for n in drop])
    by_name = {t.name: t for t in model.graph.initializer}
    values = dict(arrays)
    for name in put:
        spill.put(by_name[name], values.get(name, np.full(3000, 7, np.float32)), name)
    for name in drop:
        model.graph.initializer.remove(by_name[name])
    return model, spill


def _check(tmp_path, arrays, model, spill, in_place: bool, holes: bool = True) -> None:
    want_model, want_data, want_blocks = _reference(tmp_path, arrays)
    staged = None
    try:
        staged = _staged(tmp_path / "got", model, spill)
        assert (staged.data_temp == spill.path) is in_place
        staged.commit()
    finally:
        spill.close()
        if staged is not None:
            staged.discard()
    assert (tmp_path / "got" / "m.onnx").read_bytes() == want_model
    data = tmp_path / "got" / "m.onnx.data"
    assert data.read_bytes() == want_data
    if holes:  # the zero MiB of B is a hole in both
        assert data.stat().st_blocks == want_blocks
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["m.onnx", "m.onnx.data"]


def test_spill_in_place_becomes_the_data_file(tmp_path):
    """A and C spilled in model order, B (raw, with a zero MiB) written after them."""
    arrays = [("A", A), ("C", C), ("B", B)]
    model, spill = _spilled(tmp_path, arrays, ["A", "C"])
    assert spill.ref(model.graph.initializer[1]).offset == 122880  # A's end, aligned
    _check(tmp_path, arrays, model, spill, in_place=True)


def test_spilled_then_dropped_reads_as_zeros(tmp_path):
    """X was spilled (and its bytes written) and then dropped: B is written where X was, and
    its zero MiB must read as zeros, not as X's sevens (written zeros there, not a hole)."""
    arrays = [("A", A), ("B", B)]
    model, spill = _spilled(tmp_path, arrays, ["A", "X"], drop=("X",))
    _check(tmp_path, arrays, model, spill, in_place=True, holes=False)


@pytest.mark.parametrize("case", ["order", "twice", "raw-first"])
def test_spill_out_of_place_is_copied(tmp_path, case):
    """Spilled in another order than the model's, a value spilled twice, or a raw tensor before
    the first spilled one: the spilled tensors are copied into a new data file."""
    arrays = [("A", A), ("C", C)]
    put = {"order": ["C", "A"], "twice": ["A", "A", "C"], "raw-first": ["C"]}[case]
    model, spill = _spilled(tmp_path, arrays, put)
    _check(tmp_path, arrays, model, spill, in_place=False)


def test_failed_stage_removes_the_taken_spill(tmp_path, monkeypatch):
    """An error after the spill file became the data temp: both gone, nothing in place."""
    from onnxfold import modelio

    arrays = [("A", A), ("B", B)]
    model, spill = _spilled(tmp_path, arrays, ["A"])

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modelio, "_write_unless_zero", full)
    with pytest.raises(modelio.OnnxfoldError, match="ENOSPC"):
        _staged(tmp_path / "got", model, spill)
    spill.close()
    assert list((tmp_path / "got").iterdir()) == []


@pytest.mark.parametrize("external_in", [True, False])
@pytest.mark.parametrize("writeback", [None, False])
def test_fuse_file_external_output_same_bytes(tmp_path, monkeypatch, external_in, writeback):
    """Conv -> BN with weights big enough to spill (256 channels: BN parameters of 1 KB go to
    the data file too, then are dropped): the written files are those of folding in memory and
    staging, with no temp file left; with early writeback (Linux) or without (elsewhere)."""
    from onnxfold import modelio

    monkeypatch.setattr(modelio, "_SYNC_FILE_RANGE", writeback)
    model = conv_bn_model(cin=128, cout=256, bias=True)
    src = tmp_path / "m.onnx"
    if external_in:
        onnx.save(onnx.ModelProto.FromString(model.SerializeToString()), str(src),
                  save_as_external_data=True, location="m.onnx.data",
                  size_threshold=1024)
    else:
        save_model(model, src)
    taken = []
    give_up = Spill.give_up
    monkeypatch.setattr(Spill, "give_up", lambda *a: taken.append(True) or give_up(*a))
    out = tmp_path / "f.onnx"
    assert fuse_file(src, out, check=False, external_data=True).exit_code == 0
    folded = fuse(model).model
    (tmp_path / "want").mkdir()
    want = tmp_path / "want" / "f.onnx"
    staged = stage_external(folded, want)
    staged.commit()
    staged.discard()
    assert out.read_bytes() == want.read_bytes()
    data = "f.onnx.data"
    assert (tmp_path / data).read_bytes() == (tmp_path / "want" / data).read_bytes()
    assert taken == [True]  # the spill file became the data file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
