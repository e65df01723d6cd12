"""Inference latency per runtime, BatchNormalization folded vs kept, in one run.

Exports MODEL twice with onnxfold's export pipeline (checked against onnxruntime each time):
once folded, once with every BatchNormalization kept. Then it times each artifact in its own
runtime on the same input: onnxruntime (graph optimizations off, and all on), TensorFlow
(SavedModel), LiteRT (TFLite fp32), TF.js in Node.js on the cpu and wasm backends. It prints the
median latency of each and the ratio kept / folded. Run it in the export environment:

    .venv-export/bin/python tools/bench_export.py [MODEL.onnx] [--repeats 10] [--json out.json]

A ratio near 1 means that runtime (or its converter) already folds BN itself: ORT from its basic
level on, tensorflowjs_converter (fold_batch_norms), and TF/TFLite where onnx2tf or the TFLite
converter fold constants. Threads: ORT, TF and LiteRT use both cores; TF.js wasm in Node runs on
one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "models" / "tiny-yolov2-backbone.onnx"


def _median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_variant(folder: Path, repeats: int, warmup: int, js_repeats: int) -> dict[str, float]:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from onnxfold.export import tfjs
    from onnxfold.export.tf import match_names, quiet_stderr
    from onnxfold.export.tflite import interpreter
    from onnxfold.modelio import load_model, model_bytes
    from onnxfold.parity.inputs import make_feeds
    from onnxfold.parity.run import session

    with quiet_stderr():
        import tensorflow as tf
    model = load_model(folder / "model.onnx")
    feeds, _ = make_feeds(model, {}, 0)
    outputs = [o.name for o in model.graph.output]
    res = {}
    for level in ("disable", "all"):
        s = session(model_bytes(model), level)
        res[f"onnxruntime ({level})"] = _median_ms(lambda s=s: s.run(None, feeds), warmup,
                                                   repeats)
    fn = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    ins = match_names(list(feeds), list(fn.structured_input_signature[1]), "input")
    tf_feeds = {ins[k]: tf.constant(v) for k, v in feeds.items()}
    res["tensorflow"] = _median_ms(lambda: [t.numpy() for t in fn(**tf_feeds).values()], warmup,
                                   repeats)
    it = interpreter(folder / "model_float32.tflite", threads=2)
    runner = it.get_signature_runner("serving_default")
    sig = it.get_signature_list()["serving_default"]
    ins = match_names(list(feeds), sig["inputs"], "input")
    lite_feeds = {ins[k]: v for k, v in feeds.items()}
    res["tflite"] = _median_ms(lambda: runner(**lite_feeds), warmup, repeats)
    for be in ("cpu", "wasm"):
        _, rep = tfjs.run(folder / "tfjs", feeds, outputs, be, warmup=1, repeats=js_repeats)
        res[f"tfjs {be}"] = statistics.median(rep["times_ms"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?", default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--js-repeats", type=int, default=3, help="TF.js cpu takes seconds per run")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)

    from onnxfold.export import export_file

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for name, fold in (("kept", False), ("folded", True)):
            out = Path(tmp) / name
            outcome = export_file(args.model, out, ["tf", "tflite", "tfjs"], fold=fold)
            if outcome.exit_code != 0:
                print(outcome.text, file=sys.stderr)
                print(f"bench_export: the {name} export failed: {outcome.error}", file=sys.stderr)
                return 1
            print(f"exported {name}: BN folded {outcome.report['prepare']['folded']} of "
                  f"{outcome.report['prepare']['batchnormalizations']}; check PASS",
                  file=sys.stderr)
            results[name] = bench_variant(out, args.repeats, args.warmup, args.js_repeats)
    rows = list(results["folded"])
    print(f"model: {args.model}  (median ms; ratio = BN kept / BN folded)")
    print(f"  {'runtime':<24} {'BN kept':>10} {'BN folded':>10} {'ratio':>7}")
    for r in rows:
        k, f = results["kept"][r], results["folded"][r]
        print(f"  {r:<24} {k:>10.2f} {f:>10.2f} {k / f:>7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "median_ms": results},
                                        indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
