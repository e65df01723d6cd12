"""onnxfold: fold BatchNormalization into the layer before it, and prove nothing changed."""

from __future__ import annotations

__version__ = "0.1.0"

from onnxfold.errors import OnnxfoldError
from onnxfold.fold.engine import Fold, FuseResult, Refusal, fuse

__all__ = [
    "Fold", "FuseResult", "OnnxfoldError", "Refusal", "__version__", "check", "convert_darknet",
    "fuse",
]


def convert_darknet(cfg_path, weights_path=None, **options):
    """A darknet .cfg (and .weights, or weights_seed=N) as an ONNX model: see
    onnxfold.darknet.convert_darknet."""
    from onnxfold.darknet import convert_darknet as _convert

    return _convert(cfg_path, weights_path, **options)


def check(a, b, **options):
    """Do model files a and b compute the same thing in onnxruntime? -> ParityReport.

    Options as `onnxfold check` (see onnxfold.parity.job.check); onnxruntime is imported here,
    not when onnxfold is."""
    from onnxfold.parity.job import check as _check

    return _check(a, b, **options)
