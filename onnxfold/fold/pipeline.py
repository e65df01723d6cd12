"""`onnxfold fuse` on files: load, fold, validate, prove, then write atomically or not at all."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError

from onnxfold.errors import OnnxfoldError
from onnxfold.fold import report
from onnxfold.fold.engine import fuse_in_place, op_counts, select_rules
from onnxfold.fold.rules import all_rules
from onnxfold.graph import subgraphs, walk_graphs
from onnxfold.modelio import (
    INLINE_BELOW,
    PROTOBUF_LIMIT,
    ExternalRef,
    Spill,
    StagedSave,
    atomic_file,
    data_path,
    external_ref,
    fsync_file,
    goes_external,
    inline_external,
    inline_size,
    model_bytes,
    paused_gc,
    read_model,
    stage_external,
    tensor_data_size,
    tensors,
    write_streamed,
    write_temp,
    writing,
)
from onnxfold.parity import check_parity
from onnxfold.parity.inputs import real_inputs

# Folded weights of an inline model from this size on are kept on disk until written.
SPILL_ABOVE = 1 << 20


@dataclass
class FuseOutcome:
    exit_code: int  # 0 written, 1 check or validation failed (nothing written)
    report: dict
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def text(self) -> str:
        return report.render(self.report, self.timings)


def default_output(source: Path) -> Path:
    stem = source.name[:-5] if source.name.lower().endswith(".onnx") else source.name
    return source.with_name(f"{stem}.folded.onnx")


def check_output_path(source: Path, target: Path, force: bool, *taken: Path) -> None:
    """Refuse, before any work, an output we could not or must not write.

    `taken` are the other outputs of the same run: no two outputs may be the same file.
    """
    if not target.parent.is_dir():
        raise OnnxfoldError(target, "a path in an existing folder", f"no folder '{target.parent}'")
    if not os.access(target.parent, os.W_OK | os.X_OK):  # refused before the work, not after
        raise OnnxfoldError(target, "a path in a folder onnxfold can write",
                            f"'{target.parent}' is not writable")
    if target.is_dir():
        raise OnnxfoldError(target, "an output file path", "a directory")
    if source.exists() and _same(source, target):
        raise OnnxfoldError(target, "an output path other than the input", "the input file itself")
    for other in taken:
        if _same(other, target):
            raise OnnxfoldError(target, "a path no other output of this run uses", f"'{other}'")
    if target.exists() and not force:
        raise OnnxfoldError(target, "a path with no file yet (or --force)", "an existing file")


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def fuse_file(
    source: Path,
    target: Path | None = None,
    *,
    force: bool = False,
    check: bool = True,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    report_path: Path | None = None,
    dry_run: bool = False,
    only: list[str] | None = None,
    skip: list[str] | None = None,
    keep: list[str] | None = None,
    external_data: bool | None = None,
) -> FuseOutcome:
    """The whole `onnxfold fuse` job; raises OnnxfoldError for bad input (exit 2).

    dry_run: say what would fold and why not, run no check and write no model.
    external_data: write the weights to `<output>.data` (True), inside the model (False), or
    as the input has them (None).
    """
    t0 = time.perf_counter()
    try:
        rules = select_rules(only, skip)
    except KeyError as e:
        names = ", ".join(r.name for r in all_rules())
        raise OnnxfoldError("--only/--skip", f"a rule name ({names})", repr(e.args[0])) from None
    target = target or default_output(source)
    if not dry_run:
        check_output_path(source, target, force)
    if report_path is not None:
        check_output_path(source, report_path, force, *([] if dry_run else [target]))
    timings: dict[str, float] = {}

    def lap(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - start
        return now

    with paused_gc():
        original, refs = read_model(source)  # external data stays on disk, locations checked
    external_in = bool(refs)
    external_out = external_in if external_data is None else external_data
    data_file = data_path(target) if external_out and not dry_run else None
    _check_not_inputs({r.file for r in refs}, [target, data_file, report_path])
    if data_file is not None:
        check_output_path(source, data_file, force, target, *filter(None, [report_path]))
    t = lap("load", t0)
    _check_shape_names(original, shapes or {})
    _check_keep_names(original, keep or [])
    ops_before = op_counts(original)
    # Folded in place: the loaded proto is ours, and a copy of a 2 GB model costs 2 GB. The
    # original is the input file from here on (the checker and onnxruntime read it by path).
    # Big folded weights go to disk as they are made, not into the proto, which keeps the old
    # ones until it is freed: a model is never in memory twice (see modelio.Spill).
    spill = None
    if not dry_run:
        spill = Spill(target, INLINE_BELOW if external_in and external_out else SPILL_ABOVE,
                      to_data=external_out, held=not external_in and not external_out)
    staged: StagedSave | None = None
    inline_temp: Path | None = None
    try:
        result = fuse_in_place(original, rules, frozenset(keep or []),
                               base_dir=str(source.parent), spill=spill)
        del original
        ops_after = op_counts(result.model)
        t = lap("fold", t)
        error, parity, candidate = "", None, None
        if not dry_run:
            # The candidate is written to a temp file beside the target, checked and run from
            # there and renamed into place: serialized once, and the proto is released before
            # the checker reads the file (it would serialize a proto it is given: 3 copies).
            if external_out and any(goes_external(k, x) for k, x in tensors(result.model)):
                staged = stage_external(result.model, target, source, spill)
                candidate = staged.model_temp
            elif not external_in and not (spill and spill.size):  # all of it in memory
                data = _inline_bytes(result.model, target)
                result.model = onnx.ModelProto()
                with writing(target):
                    inline_temp = write_temp(target, data, sync=False)
                del data
                candidate = inline_temp
            else:
                _check_fits_inline(result.model, target)
                streamed = _streamed(result.model, source, spill)
                inline_external(result.model, source.parent, source, keep=streamed)
                with writing(target):
                    if any(streamed(x) for x in result.model.graph.initializer):
                        inline_temp = write_streamed(result.model, target, streamed, sync=False)
                    else:
                        inline_temp = write_temp(target, model_bytes(result.model), sync=False)
                candidate = inline_temp
            result.model = onnx.ModelProto()  # released: it is in the candidate file now
            if spill is not None and spill.held:
                spill.close()  # its arrays too
            t = lap("save", t)
            error = _validate(candidate, source)
            t = lap("checker", t)
        if check and not error and not dry_run:
            parity = check_parity(source, candidate, shapes=shapes, seed=seed)
            t = lap("check", t)
            if parity.status == "fail":
                error = "parity check failed: the folded model disagrees with the original"
        ok = not error
        written = ok and not dry_run
        layout = None
        if written:
            layout = {"layout": "inline", "external_data": None}
            if staged is not None:
                layout = {"layout": "external", "external_data": {
                    "file": staged.data_file.name, "tensors": staged.tensors,
                    "bytes": staged.size}}
        rep = report.build(
            result, ops_before, ops_after, parity, str(source),
            str(target) if written else None, dry_run, layout,
        )
        # The report goes in place only if the model did: one failed write, nothing written.
        with atomic_file(report_path, report.to_json(rep).encode()) if report_path else (
            nullcontext()
        ):
            if written:
                if staged is not None:
                    staged.commit()
                else:
                    with writing(target):
                        # The disk wrote it while the checker and the check ran: little to
                        # wait for now (a 1.2 GB model's fsync took 3-4 s on this machine).
                        fsync_file(inline_temp)
                        os.replace(inline_temp, target)
                t = lap("save", t)
    finally:
        if spill is not None:
            spill.close()
        if staged is not None:
            staged.discard()
        if inline_temp is not None:
            with suppress(FileNotFoundError):
                os.unlink(inline_temp)
    timings["total"] = time.perf_counter() - t0
    return FuseOutcome(0 if ok else 1, rep, timings, error)


def _streamed(model: onnx.ModelProto, source: Path, spill: Spill | None):
    """Which external tensors an inline output streams from their files (see
    modelio.write_streamed): the main graph's initializers, from the spill or the source."""
    # By identity, the tensors held here (a freed wrapper's id may be another's later).
    main = {id(t): t for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL}

    def ref(t: onnx.TensorProto) -> ExternalRef | None:
        if main.get(id(t)) is not t:
            return None
        got = spill.ref(t) if spill is not None else None
        return got or external_ref(t, source.parent, source)

    return ref


def _check_not_inputs(data_files: set[Path], outputs: list[Path | None]) -> None:
    """No output may be one of the input's external data files, --force or not."""
    for out in outputs:
        if out is not None and out.resolve() in data_files:
            raise OnnxfoldError(
                out, "an output path other than the input", "an external data file of the input"
            )


def _inline_bytes(model: onnx.ModelProto, target: Path) -> bytes:
    """model_bytes, or the error _check_fits_inline gives when it is over protobuf's limit
    (asked of protobuf by serializing: its ByteSize costs as much as serializing)."""
    try:
        return model_bytes(model)
    except EncodeError:
        _check_fits_inline(model, target)
        raise


def _check_fits_inline(model: onnx.ModelProto, target: Path) -> None:
    """A model with every tensor inside it must stay under protobuf's 2 GB limit."""
    if inline_size(model) > PROTOBUF_LIMIT:
        raise OnnxfoldError(
            target, "a model under protobuf's 2 GB limit with every tensor inside it",
            f"{tensor_data_size(model)} bytes of tensor data: use --external-data",
        )


def _validate(folded: onnx.ModelProto | Path, original: onnx.ModelProto | Path) -> str:
    """The folded model must pass the full onnx checker, unless the original does not either.

    A model with external data is checked by its file path: the checker reads data files
    relative to it, and a path works past protobuf's 2 GB limit."""
    try:
        _check(folded)
        return ""
    except Exception as e:  # ValidationError or InferenceError
        folded_error = str(e).strip().splitlines()[0]
    try:
        _check(original)
    except Exception:
        return ""  # the input already fails the checker; the fold cannot be held to it
    return f"the folded model fails onnx.checker (a bug in onnxfold): {folded_error}"


def _check(model: onnx.ModelProto | Path) -> None:
    onnx.checker.check_model(
        model if isinstance(model, onnx.ModelProto) else str(model), full_check=True
    )


def _check_shape_names(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    """--shape must name real inputs, whether or not the check runs."""
    names = [i.name for i in real_inputs(model)]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        expected = f"a graph input name ({', '.join(names)})"
        raise OnnxfoldError("--shape", expected, ", ".join(unknown))


def _check_keep_names(model: onnx.ModelProto, keep: list[str]) -> None:
    """--keep must name nodes of the model: a typo must not silently fold a node."""
    if not keep:
        return
    graphs = [*walk_graphs(model.graph), *(sg for f in model.functions for n in f.node
                                           for _, g in subgraphs(n) for sg in walk_graphs(g))]
    names = {n.name for g in graphs for n in g.node}
    names |= {n.name for f in model.functions for n in f.node}
    unknown = sorted(set(keep) - names)
    if unknown:
        raise OnnxfoldError("--keep", "names of nodes in the model", ", ".join(unknown))
