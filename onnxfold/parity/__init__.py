"""Run a reference and a candidate model in onnxruntime on the same inputs and compare outputs.

Both sides run with graph optimizations disabled by default: ORT folds Conv+BatchNormalization
itself from its basic level on, which would make comparing a fold against it vacuous.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto

from onnxfold.graph import default_opset, walk_graphs
from onnxfold.modelio import (
    PROTOBUF_LIMIT,
    has_external_data,
    inline_external,
    inline_size,
    load_model,
    model_bytes,
    tensor_data_size,
)
from onnxfold.parity.compare import OutputDiff, compare
from onnxfold.parity.inputs import CannotRun, make_feeds
from onnxfold.parity.run import first_line, run, session
from onnxfold.parity.upcast import upcast_to_float32
from onnxfold.parity.upgrade import ORT_MIN_OPSET, CannotUpgrade, upgrade_for_ort

# Allowed max abs error per output, as a fraction of max |reference output|, by the model's
# least precise float type. float32: a correct fold only reorders roundings (measured <= 5e-6 on
# the peers' test models), so 1e-4 leaves 20x headroom while a wrong epsilon or a missed channel
# is off by far more. float16: the folded weights are rounded to 11 bits (rel. 4.9e-4 each) and
# that compounds through the layers; bfloat16 keeps only 8 bits (rel. 3.9e-3 each).
REL_TOL = {"float64": 1e-4, "float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}
_PRECISION = {
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.FLOAT16: "float16",
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
}


@dataclass
class ParityReport:
    status: str  # "pass", "fail" or "not-run"
    reason: str = ""
    precision: str = "float32"
    rel_tol: float = 0.0
    seed: int = 0
    inputs: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: list[OutputDiff] = field(default_factory=list)
    onnxruntime: str = ort.__version__


def precision(model: onnx.ModelProto) -> str:
    """The least precise float type among the model's initializers and graph inputs/outputs."""
    seen = {t.data_type for g in walk_graphs(model.graph) for t in g.initializer}
    for vi in (*model.graph.input, *model.graph.output):
        seen.add(vi.type.tensor_type.elem_type)
    for t in _PRECISION:  # ordered least precise first
        if t in seen:
            return _PRECISION[t]
    return "float32"


def check_parity(
    reference: onnx.ModelProto | str | os.PathLike[str],
    candidate: onnx.ModelProto | str | os.PathLike[str],
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    rel_tol: float | None = None,
) -> ParityReport:
    """Compare candidate with reference in ORT (optimizations off); no pass that did not run.

    Either model may be a file path: a model with external data must be, since onnxruntime reads
    its data files relative to the model file."""
    reference, ref_path = _graph_and_file(reference)
    candidate, cand_path = _graph_and_file(candidate)
    prec = precision(reference)
    rep = ParityReport("not-run", precision=prec, seed=seed)
    rep.rel_tol = REL_TOL[prec] if rel_tol is None else rel_tol
    for name, model, path in (("original", reference, ref_path),
                              ("rewritten", candidate, cand_path)):
        if path is None and has_external_data(model):
            rep.reason = f"the {name} model has external data: check it by its file path"
            return rep
    if default_opset(reference) < ORT_MIN_OPSET:
        # Their opset-7 conversions are run from bytes: all data must be in memory.
        try:
            reference = _inline(reference, ref_path, "an opset 7 conversion")
            candidate = _inline(candidate, cand_path, "an opset 7 conversion")
        except CannotRun as e:
            rep.reason = f"onnxruntime runs opset >= {ORT_MIN_OPSET} only, and {e}"
            return rep
        ref_path = cand_path = None
    try:
        (reference, candidate), note = upgrade_for_ort(reference, candidate)
    except CannotUpgrade as e:
        rep.reason = str(e)
        return rep
    if note:
        rep.notes.append(note)
    cand_run = cand_path or model_bytes(candidate)
    try:
        ref_sess = session(ref_path or model_bytes(reference))
    except Exception as e:  # ORT raises several types; any means "cannot load"
        try:
            reference = upcast_to_float32(_inline(reference, ref_path, "a float32 copy"))
            candidate = upcast_to_float32(_inline(candidate, cand_path, "a float32 copy"))
            ref_sess = session(model_bytes(reference))
            cand_run = model_bytes(candidate)
        except Exception as e2:
            rep.reason = f"onnxruntime cannot load the original model: {first_line(e)}"
            if isinstance(e2, CannotRun):
                rep.reason += f"; {e2}"
            return rep
        rep.notes.append(
            f"compared float32 copies of both models: onnxruntime's CPU provider cannot run the "
            f"{prec} model ({first_line(e)})"
        )
    try:
        feeds, notes = make_feeds(reference, shapes, seed)
    except CannotRun as e:
        rep.reason = str(e)
        return rep
    rep.notes += notes
    rep.inputs = {k: list(v.shape) for k, v in feeds.items()}
    try:
        ref_out = run(ref_sess, feeds)
    except Exception as e:
        rep.reason = f"onnxruntime cannot run the original model: {first_line(e)}"
        return rep
    del ref_sess  # one session at a time: each may map gigabytes of weights
    try:
        got = run(session(cand_run), feeds)
    except Exception as e:
        rep.status, rep.reason = "fail", f"the rewritten model does not run: {first_line(e)}"
        return rep
    missing = sorted(set(ref_out) - set(got))
    if missing:
        rep.status, rep.reason = "fail", f"outputs missing from the rewritten model: {missing}"
        return rep
    rep.outputs = [compare(ref_out[k], got[k], k, rep.rel_tol) for k in ref_out]
    rep.status = "pass" if all(d.passed for d in rep.outputs) else "fail"
    return rep


def _graph_and_file(
    model: onnx.ModelProto | str | os.PathLike[str],
) -> tuple[onnx.ModelProto, str | None]:
    """The model's proto (external data not read) and the file to run it from, if any."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    return load_model(model), os.fspath(model)


def _inline(model: onnx.ModelProto, path: str | None, why: str) -> onnx.ModelProto:
    """The model with all its data in memory, for `why` (a copy run from bytes); CannotRun if
    that is over protobuf's limit."""
    if path is None or not has_external_data(model):
        return model
    if inline_size(model) > PROTOBUF_LIMIT:
        raise CannotRun(
            f"{why} needs all {tensor_data_size(model)} bytes of tensor data in one protobuf, "
            "over its 2 GB limit"
        )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inline_external(out, Path(path).parent, path)
    return out
