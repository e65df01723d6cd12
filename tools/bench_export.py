"""Inference latency per runtime, BatchNormalization folded vs kept, in one run.

Exports MODEL twice with onnxfold's export pipeline (checked against onnxruntime each time):
once folded, once with every BatchNormalization kept. Then it times each artifact in its own
runtime on the same input: onnxruntime (graph optimizations off, and all on), TensorFlow
(SavedModel), LiteRT (TFLite fp32), TF.js in Node.js on the cpu and wasm backends. It prints the
median latency of each and the ratio kept / folded; the two variants alternate call by call.
Run it in the export environment:

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


def runners(folder: Path) -> tuple[dict, dict, list[str]]:
    """One zero-argument callable per in-process runtime, and the feeds and output names."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from onnxfold.export.tf import match_names, quiet_stderr
    from onnxfold.export.tflite import interpreter
    from onnxfold.modelio import load_model, model_bytes
    from onnxfold.parity.inputs import make_feeds
    from onnxfold.parity.run import session

    with quiet_stderr():
        import tensorflow as tf
    model = load_model(folder / "model.onnx")
    feeds, _ = make_feeds(model, {}, 0)
    run = {}
    for level in ("disable", "all"):
        s = session(model_bytes(model), level)
        run[f"onnxruntime ({level})"] = lambda s=s: s.run(None, feeds)
    fn = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    ins = match_names(list(feeds), list(fn.structured_input_signature[1]), "input")
    tf_feeds = {ins[k]: tf.constant(v) for k, v in feeds.items()}
    run["tensorflow"] = lambda: [t.numpy() for t in fn(**tf_feeds).values()]
    it = interpreter(folder / "model_float32.tflite", threads=2)
    runner = it.get_signature_runner("serving_default")
    ins = match_names(list(feeds), it.get_signature_list()["serving_default"]["inputs"], "input")
    lite_feeds = {ins[k]: v for k, v in feeds.items()}
    run["tflite"] = lambda: runner(**lite_feeds)
    return run, feeds, [o.name for o in model.graph.output]


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench(folders: dict[str, Path], repeats: int, warmup: int, js_rounds: int):
    """Median ms per (variant, runtime). The variants alternate call by call, so a load change
    on the (shared) machine hits both alike."""
    from onnxfold.export import tfjs

    made = {v: runners(f) for v, f in folders.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for rt in made[next(iter(made))][0]:
        for _ in range(warmup):
            for v in made:
                made[v][0][rt]()
        for _ in range(repeats):
            for v in made:
                times.setdefault((v, rt), []).append(_ms(made[v][0][rt]))
    for be in ("cpu", "wasm"):
        for _ in range(js_rounds):
            for v, f in folders.items():
                _, feeds, outs = made[v]
                _, rep = tfjs.run(f / "tfjs", feeds, outs, be, warmup=1, repeats=1)
                times.setdefault((v, f"tfjs {be}"), []).extend(rep["times_ms"])
    return {k: statistics.median(t) for k, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?", default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--js-rounds", type=int, default=3,
                    help="Node runs per variant and backend (TF.js cpu takes seconds per run)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)

    from onnxfold.export import export_file

    folders = {}
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
            folders[name] = out
        med = bench(folders, args.repeats, args.warmup, args.js_rounds)
    results = {v: {rt: ms for (vv, rt), ms in med.items() if vv == v} for v in folders}
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
