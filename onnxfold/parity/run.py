"""onnxruntime sessions on the CPU provider, with a chosen graph optimization level."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

# onnxruntime's GraphOptimizationLevel members by our names; it is imported on first use only.
LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def session(model: bytes | str | os.PathLike[str], level: str = "disable") -> ort.InferenceSession:
    """A CPU session on serialized model bytes, or on a model file (external data is read
    relative to the file's folder)."""
    import onnxruntime as ort

    if not isinstance(model, bytes):
        model = os.fspath(model)
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    # Fatal only: the report gives ORT's errors itself (one line); ORT's own log lines would add
    # colour-coded duplicates to stderr.
    so.log_severity_level = 4
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
