"""Run a reference and a candidate model in onnxruntime on the same inputs and compare outputs.

Both sides run with graph optimizations disabled by default: ORT folds Conv+BatchNormalization
itself from its basic level on, which would make comparing a fold against it vacuous.

onnxruntime is imported when a check runs, not with this package: `onnxfold --help` and
`onnxfold fuse --no-check` never pay for it (tests/test_imports.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
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
from onnxfold.parity import signature
from onnxfold.parity.bisect import BisectResult, bisect
from onnxfold.parity.compare import OutputDiff, compare
from onnxfold.parity.inputs import CannotRun, make_feeds
from onnxfold.parity.run import first_line, ort_version, run, session
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
class CheckOptions:
    """How `onnxfold check` runs and judges; the defaults are what `onnxfold fuse` uses."""

    shapes: dict[str, list[int]] = field(default_factory=dict)  # for dynamic dims
    seed: int = 0
    trials: int = 1  # random input sets, seeds seed .. seed+trials-1; the worst counts
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    given: dict[str, np.ndarray] = field(default_factory=dict)  # real data by input name
    rel_tol: float | None = None  # fraction of max|ref|; None: REL_TOL by precision
    atol: float = 0.0
    ref_level: str = "disable"  # onnxruntime graph optimization level, reference side
    level: str = "disable"  # ... candidate side
    mapping: dict[str, str] = field(default_factory=dict)  # reference name -> candidate name
    positional: bool = False  # pair inputs and outputs by position
    topk: int = 0
    bisect: bool = False  # on a failure, find the first intermediate tensor that differs
    labels: tuple[str, str] = ("original", "rewritten")  # how reasons name the two models


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
    onnxruntime: str = field(default_factory=lambda: ort_version())
    atol: float = 0.0
    trials: int = 1
    levels: dict[str, str] = field(default_factory=dict)
    mapping: dict[str, str] = field(default_factory=dict)  # names that differ: ref -> candidate
    bisect: BisectResult | None = None
    bisect_note: str = ""


def precision(model: onnx.ModelProto) -> str:
    """The least precise float type among the model's initializers and graph inputs/outputs."""
    seen = {t.data_type for g in walk_graphs(model.graph) for t in g.initializer}
    for vi in (*model.graph.input, *model.graph.output):
        seen.add(vi.type.tensor_type.elem_type)
    for t in _PRECISION:  # ordered least precise first
        if t in seen:
            return _PRECISION[t]
    return "float32"


Model = onnx.ModelProto | str | os.PathLike[str]


def check_parity(
    reference: Model,
    candidate: Model,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    rel_tol: float | None = None,
    options: CheckOptions | None = None,
    paths: tuple[str, str] = ("reference", "candidate"),
) -> ParityReport:
    """Compare candidate with reference in ORT (optimizations off by default); never a pass that
    did not run. Raises OnnxfoldError when the two do not take and give the same tensors.

    Either model may be a file path: a model with external data must be, since onnxruntime reads
    its data files relative to the model file. `paths` name them in signature errors."""
    o = options or CheckOptions()
    if options is None:
        o = CheckOptions(shapes=shapes or {}, seed=seed, rel_tol=rel_tol)
    reference, ref_path = _graph_and_file(reference)
    prec = precision(reference)
    reference = _signature_of(reference, ref_path)
    candidate, cand_path = _graph_and_file(candidate)
    candidate = _signature_of(candidate, cand_path)
    pairing = signature.pair(reference, candidate, *paths, o.mapping, o.positional)
    rep = ParityReport("not-run", precision=prec, seed=o.seed, atol=o.atol, trials=o.trials,
                       levels={"reference": o.ref_level, "candidate": o.level})
    rep.rel_tol = REL_TOL[prec] if o.rel_tol is None else o.rel_tol
    rep.mapping = {a: b for a, b in (*pairing.inputs, *pairing.outputs) if a != b}
    ref_name, cand_name = o.labels
    for name, model, path in ((ref_name, reference, ref_path), (cand_name, candidate, cand_path)):
        if path is None and has_external_data(model):
            rep.reason = f"the {name} model has external data: check it by its file path"
            return rep
    if default_opset(reference) < ORT_MIN_OPSET or default_opset(candidate) < ORT_MIN_OPSET:
        # Their opset-7 conversions are run from bytes: all data must be in memory.
        try:
            reference = _inline(reference, ref_path, "an opset 7 conversion")
            candidate = _inline(candidate, cand_path, "an opset 7 conversion")
        except CannotRun as e:
            rep.reason = f"onnxruntime runs opset >= {ORT_MIN_OPSET} only, and {e}"
            return rep
        ref_path = cand_path = None
    try:
        reference, note = _upgraded(reference)
        candidate, note_b = _upgraded(candidate)
    except CannotUpgrade as e:
        rep.reason = str(e)
        return rep
    rep.notes += [n for n in dict.fromkeys((note, note_b)) if n]
    try:
        trials, notes = _feeds(reference, o)
    except CannotRun as e:
        rep.reason = str(e)
        return rep
    rep.notes += notes
    rep.trials = len(trials)
    rep.inputs = {k: list(v.shape) for k, v in trials[0].items()}
    try:
        ref_sess = session(ref_path or model_bytes(reference), o.ref_level)
    except Exception as e:  # ORT raises several types; any means "cannot load"
        try:
            reference = upcast_to_float32(_inline(_proto(reference, ref_path), ref_path,
                                                  "a float32 copy"))
            candidate = upcast_to_float32(_inline(_proto(candidate, cand_path), cand_path,
                                                  "a float32 copy"))
            ref_sess = session(model_bytes(reference), o.ref_level)
            ref_path = cand_path = None
            trials = [{k: _as_float32(v) for k, v in f.items()} for f in trials]
        except Exception as e2:
            rep.reason = f"onnxruntime cannot load the {ref_name} model: {first_line(e)}"
            if isinstance(e2, CannotRun):
                rep.reason += f"; {e2}"
            return rep
        rep.notes.append(
            f"compared float32 copies of both models: onnxruntime's CPU provider cannot run the "
            f"{prec} model ({first_line(e)})"
        )
    names = [a for a, _ in pairing.outputs]
    try:
        ref_outs = [run(ref_sess, feeds) for feeds in trials]
    except Exception as e:
        rep.reason = f"onnxruntime cannot run the {ref_name} model: {first_line(e)}"
        return rep
    del ref_sess  # one session at a time: each may map gigabytes of weights
    to_cand = dict(pairing.inputs)
    cand_trials = [{to_cand[k]: v for k, v in feeds.items()} for feeds in trials]
    try:
        cand_sess = session(cand_path or model_bytes(candidate), o.level)
        got = [run(cand_sess, feeds) for feeds in cand_trials]
    except Exception as e:
        rep.status, rep.reason = "fail", f"the {cand_name} model does not run: {first_line(e)}"
        return rep
    del cand_sess
    worst: dict[str, OutputDiff] = {}
    for t, (ref_out, cand_out) in enumerate(zip(ref_outs, got)):
        for a, b in pairing.outputs:
            d = replace(compare(ref_out[a], cand_out[b], a, rep.rel_tol, o.atol, o.topk), trial=t)
            if a not in worst or _worse(d, worst[a]):
                worst[a] = d
    rep.outputs = [worst[a] for a in names]
    rep.status = "pass" if all(d.passed for d in rep.outputs) else "fail"
    if rep.status == "fail" and o.bisect:
        t = next(d.trial for d in rep.outputs if not d.passed)
        _bisect(rep, o, (reference, ref_path), (candidate, cand_path), trials[t],
                cand_trials[t])
    return rep


def _worse(d: OutputDiff, than: OutputDiff) -> bool:
    """Which trial represents an output: a failing one, else the largest error."""
    return (not d.passed, d.max_abs) > (not than.passed, than.max_abs)


def _upgraded(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    (out,), note = upgrade_for_ort(model)
    return out, note


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a


def _feeds(model: onnx.ModelProto, o: CheckOptions) -> tuple[list[dict], list[str]]:
    """One set of inputs per trial; a single one when every input is given data."""
    first, notes = make_feeds(model, o.shapes, o.seed, o.ranges, o.given)
    if set(o.given) >= set(first):
        if o.trials > 1:
            notes.append(f"one trial, not {o.trials}: every input is given data")
        return [first], notes
    rest = [make_feeds(model, o.shapes, o.seed + t, o.ranges, o.given)[0]
            for t in range(1, o.trials)]
    return [first, *rest], notes


def _bisect(rep: ParityReport, o: CheckOptions, ref, cand, feeds, cand_feeds) -> None:
    try:
        a = _inline(_proto(*ref), ref[1], "bisect")
        b = _inline(_proto(*cand), cand[1], "bisect")
    except CannotRun as e:
        rep.bisect_note = f"bisect not run: {e}"
        return

    def runner(feeds_, level):
        return lambda m, names: session(model_bytes(m), level).run(names, feeds_)

    try:
        rep.bisect = bisect(a, b, runner(feeds, o.ref_level), runner(cand_feeds, o.level),
                            rep.rel_tol, o.atol)
    except Exception as e:  # a model that runs may still refuse extra outputs
        rep.bisect_note = f"bisect not run: {first_line(e)}"


def _graph_and_file(
    model: onnx.ModelProto | str | os.PathLike[str],
) -> tuple[onnx.ModelProto, str | None]:
    """The model's proto (external data not read) and the file to run it from, if any."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    return load_model(model), os.fspath(model)


_SIGNATURE = "onnxfold: signature only"  # the doc_string of _signature_of's protos


def _signature_of(model: onnx.ModelProto, path: str | None) -> onnx.ModelProto:
    """For a model onnxruntime will read from its file: a proto of its opsets, inputs and
    outputs only, so a check of a 2 GB model does not hold two 2 GB protos while it runs
    sessions (_proto reads the whole model again where one is needed). Models below opset 7
    are converted before they run: kept whole."""
    if path is None or default_opset(model) < ORT_MIN_OPSET:
        return model
    out = onnx.ModelProto(ir_version=model.ir_version, doc_string=_SIGNATURE)
    out.opset_import.extend(model.opset_import)
    g = model.graph
    out.graph.input.extend(g.input)
    out.graph.output.extend(g.output)
    inputs = {i.name for i in g.input}
    for t in g.initializer:  # an initializer that is also an input is not a real input
        if t.name in inputs:
            out.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
    return out


def _proto(model: onnx.ModelProto, path: str | None) -> onnx.ModelProto:
    """The whole model, read again from its file if `model` is its signature only."""
    return load_model(path) if model.doc_string == _SIGNATURE and path else model


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
