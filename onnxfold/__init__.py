"""onnxfold: fold BatchNormalization into the layer before it, and prove nothing changed."""

from __future__ import annotations

__version__ = "0.1.0"

from onnxfold.errors import OnnxfoldError
from onnxfold.fold.engine import Fold, FuseResult, Refusal, fuse

__all__ = ["Fold", "FuseResult", "OnnxfoldError", "Refusal", "__version__", "fuse"]
