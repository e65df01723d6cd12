"""The export report: one dict (written as export.json) and its text rendering."""

from __future__ import annotations

import json
from dataclasses import asdict

from onnxfold.export.prepare import Prepared
from onnxfold.parity import ParityReport
from onnxfold.parity.compare import OutputDiff


def start(source: str, out_dir: str, targets: list[str], nhwc: bool, prep: Prepared,
          tools: dict[str, str]) -> dict:
    """Everything known before conversion; deterministic (no timings, no clocks)."""
    from onnxfold import __version__

    return {
        "onnxfold": __version__,
        "input": source,
        "output": None,
        "targets": targets,
        "layout": "NHWC" if nhwc else "NCHW",
        "tools": tools,
        "prepare": {
            "batchnormalizations": prep.bns,
            "folded": prep.folded,
            "rewrites": prep.rewrites,
            "shapes": prep.shapes,
            "notes": prep.notes,
            "fold_check": _parity(prep.fold_check),
            "rewrite_check": _parity(prep.rewrite_check),
        },
        "check": {"status": "not-run", "reason": "not reached"},
        "files": [],
    }


def _parity(p: ParityReport | None) -> dict | None:
    if p is None:
        return None
    return {"status": p.status, "reason": p.reason, "rel_tol": p.rel_tol,
            "outputs": [diff_dict(o) for o in p.outputs]}


def diff_dict(d: OutputDiff) -> dict:
    keep = ("name", "ref_max", "max_abs", "max_rel", "mean_abs", "tolerance", "worst_ref",
            "worst_got", "passed", "note")
    a = asdict(d)
    return {**{k: a[k] for k in keep}, "shape": list(d.shape), "worst_index": list(d.worst_index)}


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=True) + "\n"


def render(report: dict, timings: dict[str, float]) -> str:
    target = report["output"] or "(nothing written)"
    lines = [f"onnxfold export: {report['input']} -> {target} "
             f"({', '.join(report['targets'])}; layout {report['layout']})"]
    p = report["prepare"]
    rw = "; rewrote " + ", ".join(p["rewrites"]) if p["rewrites"] else ""
    lines.append(f"prepare: folded {p['folded']} of {p['batchnormalizations']} "
                 f"BatchNormalization{rw}")
    lines += [f"  note: {n}" for n in p["notes"]]
    for key, what in (("fold_check", "fold"), ("rewrite_check", "rewrites")):
        c = p[key]
        if c is None or (key == "rewrite_check" and not p["rewrites"]):
            continue
        worst = max((o["max_abs"] / o["ref_max"] if o["ref_max"] else o["max_abs"]
                     for o in c["outputs"]), default=0.0)
        res = {"pass": "PASS", "fail": "FAIL"}.get(c["status"], "NOT RUN: " + c["reason"])
        lines.append(f"  {what} in onnxruntime: {res} (max abs err / max|ref| {worst:.2e}, "
                     f"allowed {c['rel_tol']:g})")
    t = report["tools"]
    lines.append("tools: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    lines += _render_check(report["check"], report.get("tools", {}))
    if report["files"]:
        lines.append("files: " + ", ".join(report["files"]) + ", export.json")
    if timings:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total")
        lines.append(f"time: {timings.get('total', 0.0):.2f} s ({parts})")
    return "\n".join(lines)


def _render_check(c: dict, tools: dict[str, str]) -> list[str]:
    if c["status"] == "not-run":
        return [f"check: NOT RUN: {c['reason']}"] + [f"  | {ln}" for ln in c.get("log_tail", [])]
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in c["inputs"].items())
    lines = [f"check: {'PASS' if c['status'] == 'pass' else 'FAIL'} against onnxruntime "
             f"{tools.get('onnxruntime', '?')} (graph optimizations off) on model.onnx; "
             f"seed {c['seed']}; inputs {shapes}"]
    if c["channel_last_outputs"]:
        lines.append("  channel-last outputs (compared with the reference transposed): "
                     + ", ".join(c["channel_last_outputs"]))
    rows = [(a, o) for a in c["artifacts"] for o in (a["outputs"] or [None])]
    wa = max(len(f"{a['artifact']} ({a['precision']})") for a, _ in rows)
    wo = max([len(o["name"]) for _, o in rows if o] + [6])
    lines.append(f"  {'artifact':<{wa}}  {'output':<{wo}}  {'max|ref|':>10}  {'max abs err':>11}  "
                 f"{'max rel err':>11}  {'allowed':>10}  result")
    for a, o in rows:
        name = f"{a['artifact']} ({a['precision']})"
        if o is None:
            lines.append(f"  {name:<{wa}}  {'-':<{wo}}  FAIL: {a['error']}")
            continue
        res = "PASS" if o["passed"] else "FAIL"
        lines.append(
            f"  {name:<{wa}}  {o['name']:<{wo}}  {o['ref_max']:>10.4g}  {o['max_abs']:>11.3e}  "
            f"{o['max_rel']:>11.3e}  {o['tolerance']:>10.3e}  {res}"
            + ("" if o["passed"] else
               f"  worst at {o['worst_index']}: {o['worst_ref']!r} vs {o['worst_got']!r}")
            + (f"  {o['note']}" if o["note"] else ""))
    return lines
