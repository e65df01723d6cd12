"""tests/corpus/: every model regenerates byte for byte and has exactly its expected outcome."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import onnxfold
from onnxfold.fold.engine import op_counts
from onnxfold.fold.rules import all_rules
from onnxfold.parity import check_parity
from tests.builders import assert_refused
from tests.corpus import make_corpus

CORPUS = Path(make_corpus.__file__).parent
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())


def test_corpus_is_complete():
    assert len(MANIFEST) >= 40
    assert make_corpus.manifest() == MANIFEST
    assert sorted(p.stem for p in CORPUS.glob("*.onnx")) == sorted(MANIFEST)
    rules = {r for e in MANIFEST.values() for r in e.get("fold", [])}
    assert rules == {r.name for r in all_rules()}  # every rule folds at least once
    assert sum("refuse" in e for e in MANIFEST.values()) >= 15


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_entry(name):
    path = CORPUS / f"{name}.onnx"
    regenerate = "python -m tests.corpus.make_corpus"
    assert path.read_bytes() == make_corpus.build(name), regenerate
    model = onnx.load(path)
    expect = MANIFEST[name]
    if "refuse" in expect:
        assert_refused(model, expect["refuse"])
        return
    result = onnxfold.fuse(model)
    assert [r.reason for r in result.refused] == []
    assert [f.rule for f in result.folded] == expect["fold"]
    after = op_counts(result.model)  # subgraphs and functions included
    assert not {"BatchNormalization", "Mul", "Sub", "Div"} & set(after)
    onnx.checker.check_model(result.model, full_check=True)
    rep = check_parity(model, result.model, seed=3)  # ORT, graph optimizations off
    assert rep.status == "pass", rep
    # fp32: a correct fold reorders roundings only (<= 4e-7 measured); fp16 rounds weights once.
    for d in rep.outputs:
        assert d.max_abs <= (2e-3 if rep.precision == "float16" else 1e-5) * d.ref_max
