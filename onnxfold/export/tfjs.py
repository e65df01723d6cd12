"""SavedModel -> TF.js graph model (tensorflowjs_converter); run it in Node.js (js/run_tfjs.js)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from onnxfold.export.stack import JS_DIR, node_path
from onnxfold.export.tf import ConversionError, match_names, quiet_env, run_tool

QUANTIZE = ("float16", "uint8")


def convert(saved_model: Path, out: Path, work: Path, quantize: str | None = None) -> None:
    cmd = [sys.executable, "-m", "tensorflowjs.converters.converter",
           "--input_format=tf_saved_model", "--output_format=tfjs_graph_model",
           str(saved_model), str(out)]
    if quantize:
        cmd.append(f"--quantize_{quantize}")  # last, so it takes no value: quantize every weight
    run_tool(cmd, work, work / "convert.log", "tensorflowjs_converter")
    # The converter writes each node's attributes in protobuf map order, which varies from run
    # to run; the same JSON with sorted keys makes model.json byte-deterministic.
    mj = out / "model.json"
    mj.write_text(json.dumps(json.loads(mj.read_text()), sort_keys=True))


def signature(model_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(input key -> node name, output key -> node name) from model.json's signature."""
    sig = json.loads((model_dir / "model.json").read_text())["signature"]
    return ({k: v["name"].split(":")[0] for k, v in sig["inputs"].items()},
            {k: v["name"] for k, v in sig["outputs"].items()})


def run(
    model_dir: Path, feeds: dict[str, np.ndarray], outputs: list[str], backend: str,
    warmup: int = 0, repeats: int = 0,
) -> tuple[dict[str, np.ndarray], dict]:
    """Outputs by ONNX output name, and run_tfjs.js's report (versions, times_ms)."""
    sig_in, sig_out = signature(model_dir)
    ins = match_names(list(feeds), list(sig_in), "input")
    outs = match_names(outputs, list(sig_out), "output")
    with tempfile.TemporaryDirectory(prefix="onnxfold-tfjs-") as tmp:
        t = Path(tmp)
        req = {"model": str(model_dir.resolve()), "backend": backend, "out_dir": tmp,
               "outputs": [sig_out[outs[k]] for k in outputs], "inputs": [],
               "warmup": warmup, "repeats": repeats, "result": str(t / "result.json")}
        for i, (k, v) in enumerate(feeds.items()):
            f = t / f"in{i}.bin"
            np.ascontiguousarray(v, dtype="<f4").tofile(f)
            req["inputs"].append({"node": sig_in[ins[k]], "shape": list(v.shape), "file": str(f)})
        (t / "req.json").write_text(json.dumps(req))
        proc = subprocess.run([node_path(), str(JS_DIR / "run_tfjs.js"), str(t / "req.json")],
                              capture_output=True, text=True, env=quiet_env())
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("run_tfjs:")]
            raise ConversionError(lines[-1] if lines else proc.stderr.strip()[-300:])
        res = json.loads((t / "result.json").read_text())
        got = {}
        for k, o in zip(outputs, res["outputs"]):
            got[k] = np.fromfile(o["file"], "<f4").reshape(o["shape"])
    return got, res
