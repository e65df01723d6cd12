"""ONNX -> TensorFlow SavedModel, TFLite and TensorFlow.js, each checked in its own runtime.

`export_file()` is the whole `onnxfold export` job (pipeline.py); the converters and runtimes are
imported only when used, so onnxfold works without the export stack installed.
"""

from __future__ import annotations

from onnxfold.export.pipeline import ExportOutcome, export_file, parse_targets

__all__ = ["ExportOutcome", "export_file", "parse_targets"]
