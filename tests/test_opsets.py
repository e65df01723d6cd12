"""Every opset a user may hand us: 7 to 23 run in onnxruntime; below 7 the check runs on opset-7
conversions of both models."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

import onnxfold
from onnxfold.parity import check_parity
from onnxfold.parity.upgrade import CannotUpgrade, upgrade_for_ort
from tests.builders import conv_bn_model, ops

IR_FOR_OPSET = {r[2]: r[1] for r in reversed(helper.VERSION_TABLE) if r[2] >= 7}
# BatchNormalization-1 (opsets 1-5) requires consumed_inputs; 6 has is_test and spatial.
OLD_BN = {
    1: {"is_test": 1, "consumed_inputs": [0] * 5},
    5: {"is_test": 1, "consumed_inputs": [0] * 5, "spatial": 1},
    6: {"is_test": 1, "spatial": 1},
}


def fold_and_check(m: onnx.ModelProto):
    result = onnxfold.fuse(m)
    assert [r.reason for r in result.refused] == []
    assert len(result.folded) == 1 and ops(result.model)["BatchNormalization"] == 0
    onnx.checker.check_model(result.model, full_check=True)
    assert result.model.opset_import == m.opset_import and result.model.ir_version == m.ir_version
    rep = check_parity(m, result.model)
    assert rep.status == "pass", rep
    assert rep.outputs[0].max_abs <= 1e-5 * rep.outputs[0].ref_max
    return rep


@pytest.mark.parametrize("opset", range(7, 24))
def test_every_opset_from_7(opset):
    ir = IR_FOR_OPSET[opset]
    rep = fold_and_check(conv_bn_model(opset=opset, ir=ir, bias=opset % 2 == 0))
    assert rep.notes == []


@pytest.mark.parametrize("opset", sorted(OLD_BN))
def test_opset_below_7_checked_on_conversions(opset):
    m = conv_bn_model(opset=opset, ir=3, bn_attrs=OLD_BN[opset])
    onnx.checker.check_model(m, full_check=True)
    rep = fold_and_check(m)
    assert rep.notes == [
        "compared opset 7 conversions (onnx.version_converter) of both models: onnxruntime "
        f"runs opset >= 7 only, this model is opset {opset}"
    ]


def test_opset_below_7_that_cannot_convert_is_not_run():
    # An operator opset 6 does not have: fuse() refuses such a model (wellformed), so the
    # checker is given it directly.
    m = conv_bn_model(opset=6, ir=3, bn_attrs=OLD_BN[6], tail="NoSuchOp")
    with pytest.raises(CannotUpgrade, match="cannot convert this opset 6 model"):
        upgrade_for_ort(m, m)
    rep = check_parity(m, m)
    assert rep.status == "not-run"
    assert rep.reason.startswith(
        "onnxruntime runs opset >= 7 only and onnx.version_converter cannot convert this "
        "opset 6 model (")


def test_cli_on_opset6_model(tmp_path):
    from onnxfold.fold.pipeline import fuse_file

    src = tmp_path / "old.onnx"
    onnx.save(conv_bn_model(opset=6, ir=3, bn_attrs=OLD_BN[6]), src)
    before = src.read_bytes()
    outcome = fuse_file(src)
    assert outcome.exit_code == 0, outcome.text
    assert "check: PASS" in outcome.text
    assert "note: compared opset 7 conversions" in outcome.text
    out = onnx.load(tmp_path / "old.folded.onnx")
    assert out.opset_import[0].version == 6  # the output keeps the model's own opset
    assert src.read_bytes() == before
