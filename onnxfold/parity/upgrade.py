"""Opset < 7 models, which onnxruntime does not run, are checked on opset-7 conversions."""

from __future__ import annotations

import onnx
from onnx import version_converter

from onnxfold.graph import default_opset

ORT_MIN_OPSET = 7


class CannotUpgrade(Exception):
    pass


def upgrade_for_ort(*models: onnx.ModelProto) -> tuple[list[onnx.ModelProto], str]:
    """Convert each model below opset 7 to opset 7 with onnx.version_converter; models at 7 or
    above come back as they are. Returns (models, a note saying what was done, or "")."""
    opset = default_opset(models[0])
    if opset >= ORT_MIN_OPSET:
        return list(models), ""
    try:
        out = [version_converter.convert_version(m, ORT_MIN_OPSET) for m in models]
    except Exception as e:  # the converter raises RuntimeError or its own C++ errors
        text = str(e).strip().splitlines()
        raise CannotUpgrade(
            f"onnxruntime runs opset >= {ORT_MIN_OPSET} only and onnx.version_converter cannot "
            f"convert this opset {opset} model ({text[0] if text else type(e).__name__})"
        ) from None
    note = (
        f"compared opset {ORT_MIN_OPSET} conversions (onnx.version_converter) of both models: "
        f"onnxruntime runs opset >= {ORT_MIN_OPSET} only, this model is opset {opset}"
    )
    return out, note
