"""A parity report as a JSON-ready dict and as terminal text (Polygraphy-style, per output)."""

from __future__ import annotations

from dataclasses import asdict

from onnxfold.parity import ParityReport


def parity_dict(p: ParityReport) -> dict:
    """Everything the check found, JSON-ready and deterministic (no timings)."""
    d = asdict(p)
    d["outputs"] = [_diff(asdict(o)) for o in p.outputs]
    if p.bisect is not None and p.bisect.first is not None:
        d["bisect"]["first"]["diff"] = _diff(d["bisect"]["first"]["diff"])
    return d


def _diff(o: dict) -> dict:
    return {**o, "worst_index": list(o["worst_index"]), "shape": list(o["shape"])}


def render_check(c: dict | None) -> list[str]:
    if c is None:
        return ["check: skipped (--no-check or --dry-run)"]
    if c["status"] == "not-run":
        return [f"check: NOT RUN: {c['reason']}"]
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in c["inputs"].items())
    levels = c.get("levels") or {}
    ref_level, cand_level = levels.get("reference", "disable"), levels.get("candidate", "disable")
    opt = ("graph optimizations off on both sides" if ref_level == cand_level == "disable" else
           f"graph optimizations: reference {ref_level}, candidate {cand_level}")
    trials = c.get("trials", 1)
    seeds = f"seed {c['seed']}" + (f", {trials} trials" if trials > 1 else "")
    atol = c.get("atol", 0.0)
    allowed = (f"{atol:g} + " if atol else "") + f"{c['rel_tol']:g} x max|ref|"
    head = (
        f"check: {'PASS' if c['status'] == 'pass' else 'FAIL'} (onnxruntime {c['onnxruntime']}, "
        f"{opt}; {seeds}; inputs {shapes or 'none'}; {c['precision']}: allowed max abs error "
        f"{allowed})"
    )
    lines = [head] + [f"  note: {n}" for n in c["notes"]]
    lines += [f"  pairs {a} with {b}" for a, b in sorted((c.get("mapping") or {}).items())]
    if c["reason"]:
        lines.append(f"  {c['reason']}")
    if c["outputs"]:
        lines += _table(c["outputs"])
    lines += _render_bisect(c)
    return lines


def _table(outputs: list[dict]) -> list[str]:
    w = max(len(o["name"]) for o in [*outputs, {"name": "output"}])
    topk = any(o.get("topk") for o in outputs)
    lines = [
        f"  {'output':<{w}}  {'max|ref|':>10}  {'max abs err':>11}  {'mean abs err':>12}  "
        f"{'max rel err':>11}  {'cosine':>9}  {'allowed':>10}  result"
        + ("  top-K agree" if topk else "")
    ]
    for o in outputs:
        res = "PASS" if o["passed"] else "FAIL"
        k = ""
        if o.get("topk"):
            order = "same order" if o["topk_same_order"] else "order differs"
            k = f"  top-{o['topk']} {o['topk_agree']:.0%} ({order})"
        lines.append(
            f"  {o['name']:<{w}}  {o['ref_max']:>10.4g}  {o['max_abs']:>11.3e}  "
            f"{o.get('mean_abs', 0.0):>12.3e}  {o['max_rel']:>11.3e}  "
            f"{o.get('cosine', 1.0):>9.6f}  {o['tolerance']:>10.3e}  {res}{k}"
            + ("" if o["passed"] else
               f"  worst at {o['worst_index']}: {o['worst_ref']!r} vs {o['worst_got']!r}"
               + (f" (trial {o['trial']})" if o.get("trial") else ""))
            + (f"  {o['note']}" if o["note"] else "")
        )
    return lines


def _render_bisect(c: dict) -> list[str]:
    if c.get("bisect_note"):
        return [f"  {c['bisect_note']}"]
    b = c.get("bisect")
    if not b:
        return []
    if b["first"] is None:
        return [f"bisect: all {b['compared']} tensors both models name agree; the difference "
                "arises in tensors only one of them has"]
    f, d = b["first"], b["first"]["diff"]
    after = f", after '{b['last_good']}' agreed" if b["last_good"] else ""
    return [
        f"bisect: first tensor that differs: '{f['tensor']}' ({b['compared']} compared in "
        f"order{after})",
        f"  made by {f['ref_node']} in the reference, {f['cand_node']} in the candidate",
        f"  max abs err {d['max_abs']:.3e} (allowed {d['tolerance']:.3e}), worst at "
        f"{d['worst_index']}: {d['worst_ref']!r} vs {d['worst_got']!r}",
    ]
