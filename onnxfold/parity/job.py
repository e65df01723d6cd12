"""`onnxfold check A B` on files: load, pair, run, compare, report; and the `check()` API."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxfold.errors import OnnxfoldError
from onnxfold.modelio import load_model, write_atomic
from onnxfold.parity import CheckOptions, ParityReport, check_parity
from onnxfold.parity.images import load_image
from onnxfold.parity.inputs import load_npz, real_inputs
from onnxfold.parity.render import parity_dict, render_check

DEFAULT_TRIALS = 3


def check(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    trials: int = DEFAULT_TRIALS,
    ranges: dict[str, tuple[float, float]] | None = None,
    inputs: dict[str, np.ndarray] | str | os.PathLike[str] | None = None,
    images: dict[str, str | os.PathLike[str]] | None = None,
    resize: str = "letterbox",
    rtol: float | None = None,
    atol: float = 0.0,
    ref_opt_level: str = "disable",
    opt_level: str = "disable",
    mapping: dict[str, str] | None = None,
    positional: bool = False,
    topk: int = 0,
    bisect: bool = False,
) -> ParityReport:
    """Do models a and b (files) compute the same thing? Raises OnnxfoldError on bad input.

    inputs: arrays by input name, or an .npz file of them; images: pictures by input name."""
    a, b = Path(a), Path(b)
    if trials < 1:
        raise OnnxfoldError("--trials", "a number of input sets >= 1", str(trials))
    model = load_model(a)
    load_model(b)  # bad files are refused before any run
    given = dict(load_npz(inputs) if isinstance(inputs, (str, os.PathLike)) else inputs or {})
    for name, picture in (images or {}).items():
        given[name] = _picture(model, name, picture, (shapes or {}).get(name), resize)
    options = CheckOptions(
        shapes=shapes or {}, seed=seed, trials=trials, ranges=ranges or {}, given=given,
        rel_tol=rtol, atol=atol, ref_level=ref_opt_level, level=opt_level,
        mapping=mapping or {}, positional=positional, topk=topk, bisect=bisect,
        labels=("reference", "candidate"),
    )
    return check_parity(a, b, options=options, paths=(str(a), str(b)))


def _picture(model, name: str, picture, shape: list[int] | None, resize: str) -> np.ndarray:
    vi = next((i for i in real_inputs(model) if i.name == name), None)
    if vi is None:
        names = ", ".join(i.name for i in real_inputs(model))
        raise OnnxfoldError("--image", f"a graph input name ({names})", name)
    if shape is None:
        dims = vi.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in dims]
        if len(shape) == 4 and shape[0] is None:
            shape[0] = 1
        if None in shape or not shape:
            raise OnnxfoldError(
                "--image", f"a static shape for input '{name}' (or --shape {name}:1x3xHxW)",
                "dynamic dims",
            )
    x = load_image(picture, shape, resize)
    want = vi.type.tensor_type.elem_type
    if want == 10:  # float16 inputs get the picture in float16
        return x.astype(np.float16)
    return x


@dataclass
class CheckOutcome:
    exit_code: int  # 0 pass, 1 fail
    report: ParityReport
    reference: Path
    candidate: Path

    @property
    def text(self) -> str:
        head = f"onnxfold check: {self.reference} (reference) vs {self.candidate} (candidate)"
        return "\n".join([head, *render_check(parity_dict(self.report))])


def check_files(
    a: Path, b: Path, report_path: Path | None = None, force: bool = False, **kwargs
) -> CheckOutcome:
    """The whole `onnxfold check` job; OnnxfoldError (exit 2) for bad input, including a check
    that cannot run."""
    if report_path is not None:
        from onnxfold.fold.pipeline import check_output_path

        check_output_path(a, report_path, force)
        check_output_path(b, report_path, force)
    rep = check(a, b, **kwargs)
    if report_path is not None:
        import json

        doc = {"reference": str(a), "candidate": str(b), **parity_dict(rep)}
        write_atomic(report_path,
                     (json.dumps(doc, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())
    if rep.status == "not-run":
        raise OnnxfoldError(a, "a pair of models onnxruntime can run", f"check not run: "
                            f"{rep.reason}")
    return CheckOutcome(0 if rep.status == "pass" else 1, rep, a, b)
