"""Run a .tflite model in the LiteRT interpreter (ai-edge-litert), by its serving signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxfold.export.tf import match_names, quiet_stderr


def interpreter(path: Path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    with quiet_stderr():
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    return it


def run(path: Path, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Outputs by ONNX output name."""
    it = interpreter(path)
    sig = it.get_signature_list()["serving_default"]
    ins = match_names(list(feeds), sig["inputs"], "input")
    runner = it.get_signature_runner("serving_default")
    res = runner(**{ins[k]: v for k, v in feeds.items()})
    outs = match_names(outputs, list(res), "output")
    return {k: np.asarray(res[outs[k]]) for k in outputs}
