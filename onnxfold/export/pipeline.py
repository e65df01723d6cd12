"""`onnxfold export` on files: prepare, convert, run every artifact in its runtime, compare with
onnxruntime, then move the folder into place atomically, or write nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxfold.errors import OnnxfoldError
from onnxfold.export import demo as demo_page
from onnxfold.export import report, stack
from onnxfold.export.prepare import prepare
from onnxfold.export.tf import match_names
from onnxfold.modelio import load_model, model_bytes, write_atomic
from onnxfold.parity.compare import compare
from onnxfold.parity.inputs import make_feeds
from onnxfold.parity.run import run as ort_run
from onnxfold.parity.run import session

TARGETS = ("tf", "tflite", "tfjs")
BACKENDS = ("cpu", "wasm")
# Allowed max abs error per output, as a fraction of max |onnxruntime output| (see README).
REL_TOL = {"float32": 1e-5, "float16": 2e-3, "uint8": 2e-2}
CHANNEL_LAST = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}


@dataclass
class ExportOutcome:
    exit_code: int  # 0 written, 1 a check or a conversion failed (nothing written)
    report: dict
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def text(self) -> str:
        return report.render(self.report, self.timings)


def parse_targets(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        raise OnnxfoldError("--to", f"a comma-separated list of {', '.join(TARGETS)}",
                            repr(text))
    return [t for t in TARGETS if t in names]


def export_file(
    source: Path,
    out_dir: Path,
    targets: list[str],
    *,
    force: bool = False,
    fp16: bool = False,
    quantize: str | None = None,
    nhwc: bool = False,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    check: bool = True,
    report_path: Path | None = None,
    backends: tuple[str, ...] = BACKENDS,
    fold: bool = True,
    demo: bool = False,
) -> ExportOutcome:
    """The whole `onnxfold export` job; raises OnnxfoldError for bad input or a missing tool."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = now - start
        return now

    _check_args(source, out_dir, targets, force, fp16, quantize, report_path, nhwc, demo)
    model = load_model(source)
    page = demo_page.demo_meta(model, str(source)) if demo else None
    prep = prepare(model, str(source), shapes, seed, fold)  # refuses what no target can take
    stack.require(targets)
    if demo:
        demo_page.check_bundles()
    t = lap("prepare", t0)
    rep = report.start(str(source), str(out_dir), targets, nhwc, prep, stack.versions(targets))
    rep["demo"] = demo
    error = ""
    if prep.fold_check.status == "fail" or prep.rewrite_check.status == "fail":
        error = "the prepared model disagrees with the original in onnxruntime (an onnxfold bug)"
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent.resolve(), prefix=f".{out_dir.name}.",
                                    suffix=".tmp"))
    try:
        with tempfile.TemporaryDirectory(prefix="onnxfold-export-") as w:
            work = Path(w)
            if not error:
                error = _convert_and_check(prep, staging, work, targets, fp16, quantize, nhwc,
                                           seed, check, backends, rep, lap, t, page)
        rep["output"] = str(out_dir) if not error else None
        rep["files"] = _files(staging) if not error else []
        (staging / "export.json").write_bytes(report.to_json(rep).encode())
        if not error:
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; give the usual folder mode
            _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if report_path is not None:
        write_atomic(report_path, report.to_json(rep).encode())
    timings["total"] = time.perf_counter() - t0
    return ExportOutcome(0 if not error else 1, rep, timings, error)


def _convert_and_check(prep, staging, work, targets, fp16, quantize, nhwc, seed, check,
                       backends, rep, lap, t, page=None) -> str:
    from onnxfold.export import tf, tfjs, tflite

    (staging / "model.onnx").write_bytes(model_bytes(prep.model))
    # onnx2tf gets its own copy: it writes its onnxsim-simplified model over the file it is given.
    (work / "onnx2tf").mkdir()
    onnx_path = work / "onnx2tf" / "model.onnx"
    onnx_path.write_bytes(model_bytes(prep.model))
    try:
        conv = tf.convert(onnx_path, prep.model, work, nhwc)
        artifacts = []  # (label, relative path, precision, runner)
        if "tf" in targets:
            shutil.copytree(conv.saved_model, staging / "saved_model",
                            ignore=shutil.ignore_patterns("*.tflite"))
            artifacts.append(("tf", "saved_model", "float32", tf.run_saved_model))
        if "tflite" in targets:
            shutil.copyfile(conv.tflite32, staging / "model_float32.tflite")
            artifacts.append(("tflite", "model_float32.tflite", "float32", tflite.run))
            if fp16:
                shutil.copyfile(conv.tflite16, staging / "model_float16.tflite")
                artifacts.append(("tflite-fp16", "model_float16.tflite", "float16", tflite.run))
        t = lap("convert", t)
        if "tfjs" in targets:
            saved = work / "saved_model_only"
            shutil.copytree(conv.saved_model, saved, ignore=shutil.ignore_patterns("*.tflite"))
            tfjs.convert(saved, staging / "tfjs", work, quantize)
            if page is not None:
                sig_in, sig_out = tfjs.signature(staging / "tfjs")
                i_name = prep.model.graph.input[0].name
                o_names = [o.name for o in prep.model.graph.output]
                i_key = match_names([i_name], list(sig_in), "input")[i_name]
                o_keys = match_names(o_names, list(sig_out), "output")
                demo_page.write(staging, page, sig_in[i_key],
                                {o: sig_out[o_keys[o]] for o in o_names})
            for be in backends:
                artifacts.append((f"tfjs-{be}", "tfjs", quantize or "float32",
                                  lambda p, f, o, be=be: tfjs.run(p, f, o, be)[0]))
            t = lap("convert tfjs", t)
    except tf.ConversionError as e:
        rep["check"] = {"status": "not-run", "reason": "conversion failed"}
        rep["check"]["log_tail"] = e.log_tail
        return f"conversion failed: {e}"
    if not check:
        rep["check"] = {"status": "not-run", "reason": "--no-check"}
        return ""
    feeds, _ = make_feeds(prep.model, prep.shapes, seed)
    ref = ort_run(session(model_bytes(prep.model), "disable"), feeds)
    names = list(ref)
    in_perm = {k: CHANNEL_LAST[v.ndim] if nhwc and v.ndim in CHANNEL_LAST else None
               for k, v in feeds.items()}
    for (k, v), shape in zip(feeds.items(), conv.tf_input_shapes):
        p = in_perm[k]
        want = list(v.transpose(p).shape) if p else list(v.shape)
        if shape != want:
            return f"onnx2tf made input '{k}' {shape}, expected {want}"
    tf_feeds = {k: np.ascontiguousarray(v.transpose(in_perm[k])) if in_perm[k] else v
                for k, v in feeds.items()}
    tf_ref = {k: np.ascontiguousarray(v.transpose(CHANNEL_LAST[v.ndim]))
              if conv.channel_last_outputs.get(k) else v for k, v in ref.items()}
    results = []
    for label, rel, prec, runner in artifacts:
        entry = {"artifact": label, "path": rel, "precision": prec, "rel_tol": REL_TOL[prec],
                 "outputs": [], "error": ""}
        try:
            got = runner(staging / rel, tf_feeds, names)
            diffs = [compare(tf_ref[k], got[k], k, REL_TOL[prec]) for k in names]
            entry["outputs"] = [report.diff_dict(d) for d in diffs]
            entry["status"] = "pass" if all(d.passed for d in diffs) else "fail"
        except Exception as e:  # a runtime that cannot load or run the artifact is a FAIL
            entry["status"] = "fail"
            entry["error"] = str(e).strip().splitlines()[0][:300] if str(e).strip() else repr(e)
        results.append(entry)
        t = lap(f"check {label}", t)
    rep["check"] = {
        "status": "pass" if all(r["status"] == "pass" for r in results) else "fail",
        "seed": seed, "inputs": {k: list(v.shape) for k, v in tf_feeds.items()},
        "channel_last_outputs": sorted(k for k, v in conv.channel_last_outputs.items() if v),
        "artifacts": results,
    }
    failed = [r["artifact"] for r in results if r["status"] != "pass"]
    return f"check failed for {', '.join(failed)}" if failed else ""


def _check_args(source, out_dir, targets, force, fp16, quantize, report_path, nhwc=False,
                demo=False) -> None:
    if demo and "tfjs" not in targets:
        raise OnnxfoldError("--demo", "--to with tfjs (the page runs the TF.js model)",
                            f"--to {','.join(targets)}")
    if demo and nhwc:
        raise OnnxfoldError("--demo", "the ONNX (NCHW) interface, which the page feeds",
                            "--nhwc")
    if fp16 and "tflite" not in targets:
        raise OnnxfoldError("--fp16", "--to with tflite (it adds model_float16.tflite)",
                            f"--to {','.join(targets)}")
    if quantize is not None and quantize not in ("float16", "uint8"):
        raise OnnxfoldError("--quantize", "float16 or uint8", repr(quantize))
    if quantize is not None and "tfjs" not in targets:
        raise OnnxfoldError("--quantize", "--to with tfjs (it quantizes the TF.js weights)",
                            f"--to {','.join(targets)}")
    if not out_dir.parent.is_dir():
        raise OnnxfoldError(out_dir, "a folder path in an existing folder",
                            f"no folder '{out_dir.parent}'")
    if out_dir.exists() and not out_dir.is_dir():
        raise OnnxfoldError(out_dir, "an output folder", "an existing file")
    if out_dir.exists() and not force:
        raise OnnxfoldError(out_dir, "a folder that does not exist yet (or --force)",
                            "an existing folder")
    if source.exists() and out_dir.resolve() in source.resolve().parents:
        raise OnnxfoldError(out_dir, "an output folder that does not hold the input",
                            f"the folder of '{source}'")
    if report_path is not None:
        if not report_path.parent.is_dir():
            raise OnnxfoldError(report_path, "a path in an existing folder",
                                f"no folder '{report_path.parent}'")
        if report_path.exists() and not force:
            raise OnnxfoldError(report_path, "a path with no file yet (or --force)",
                                "an existing file")


def _files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an old folder (--force) goes only after that."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
        out_dir.rename(old / "d")
    try:
        staging.rename(out_dir)
    except BaseException:
        if old is not None:
            (old / "d").rename(out_dir)
        raise
    finally:
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
