"""ONNX -> TensorFlow SavedModel (and the .tflite files) with onnx2tf; run a SavedModel in TF."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

# onnx2tf reads this file from its working directory before it tries to download it (it feeds
# the file's images to its layout checks when every input is a 3-channel image); we are offline,
# so it gets seeded random pictures instead.
CALIBRATION = "calibration_image_sample_data_20x128x128x3_float32.npy"


class ConversionError(Exception):
    """A converter failed; the message is its last error line, log_tail the end of its log."""

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail or []


@dataclass
class Converted:
    saved_model: Path
    tflite32: Path
    tflite16: Path
    channel_last_outputs: dict[str, bool]  # ONNX output name -> NHWC-style (only with --nhwc)
    tf_input_shapes: list[list[int]]


def quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU only, and no probing for GPUs
    return env


def run_tool(cmd: list[str], cwd: Path, log: Path, what: str) -> None:
    """Run a converter, its output into `log`; raise ConversionError with its last error line."""
    with open(log, "ab") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=quiet_env())
    if proc.returncode != 0:
        tail = log_lines(log)[-15:]
        raise ConversionError(f"{what} failed (exit {proc.returncode}): {last_error(log)}", tail)


# TF's C++ start-up chatter, which says nothing about the model.
_NOISE = re.compile(r"^([WIE]\d{4} |WARNING: All log messages)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_lines(log: Path) -> list[str]:
    text = _ANSI.sub("", log.read_text(errors="replace"))
    return [ln.rstrip() for ln in text.splitlines() if ln.strip() and not _NOISE.match(ln)]


def last_error(log: Path) -> str:
    lines = log_lines(log)
    for ln in reversed(lines):
        if re.search(r"(Error|Exception|ERROR)", ln):
            return ln.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"


def convert(onnx_path: Path, model: onnx.ModelProto, work: Path, nhwc: bool) -> Converted:
    """Run onnx2tf in its own process (onnx2tf_run.py); return where it put what."""
    np.save(work / CALIBRATION, np.random.default_rng(0).random((20, 128, 128, 3), np.float32))
    inputs = [i.name for i in model.graph.input if i.name not in
              {t.name for t in model.graph.initializer}]
    producers = {o: n.name for n in model.graph.node for o in n.output}
    req = {
        "onnx": str(onnx_path), "out": str(work / "tf"), "nhwc": nhwc, "inputs": inputs,
        "outputs": [[producers.get(o.name, ""), o.name] for o in model.graph.output],
    }
    (work / "onnx2tf.json").write_text(json.dumps(req))
    run_tool([sys.executable, "-m", "onnxfold.export.onnx2tf_run", "onnx2tf.json"], work,
             work / "convert.log", "onnx2tf")
    res = json.loads((work / "onnx2tf.result.json").read_text())
    stem = onnx_path.name[: -len(".onnx")]
    return Converted(work / "tf", work / "tf" / f"{stem}_float32.tflite",
                     work / "tf" / f"{stem}_float16.tflite", res["channel_last_outputs"],
                     res["tf_input_shapes"])


def match_names(onnx_names: list[str], tf_names: list[str], kind: str) -> dict[str, str]:
    """ONNX name -> TF name: equal, or equal after onnx2tf's sanitising, or `output_<i>`."""
    def norm(s: str) -> str:
        return re.sub(r"[^0-9A-Za-z]", "_", s).lstrip("_")

    out = {}
    for i, name in enumerate(onnx_names):
        if name in tf_names:
            out[name] = name
            continue
        hits = [t for t in tf_names if norm(t) == norm(name)]
        if len(hits) != 1 and kind == "output" and f"output_{i}" in tf_names:
            hits = [f"output_{i}"]
        if len(hits) != 1:
            raise ConversionError(f"cannot tell which TF {kind} is ONNX {kind} '{name}' "
                                  f"(TF has {sorted(tf_names)})")
        out[name] = hits[0]
    return out


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2: TF's C++ start-up lines (cuDNN/cuBLAS factories on a machine
    without GPU, XNNPACK delegate) ignore TF_CPP_MIN_LOG_LEVEL. Python errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_saved_model(path: Path, feeds: dict[str, np.ndarray], outputs: list[str]):
    """Outputs of the SavedModel's serving signature, by ONNX output name."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_stderr():
        import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    in_names = list(fn.structured_input_signature[1])
    out_names = list(fn.structured_outputs)
    ins = match_names(list(feeds), in_names, "input")
    res = fn(**{ins[k]: tf.constant(v) for k, v in feeds.items()})
    outs = match_names(outputs, out_names, "output")
    return {k: res[outs[k]].numpy() for k in outputs}
