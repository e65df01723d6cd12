"""Per-output comparison of a reference run and a candidate run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Relative errors divide by max(|ref|, REL_FLOOR * max|ref|) so exact zeros do not explode.
REL_FLOOR = 1e-3


@dataclass(frozen=True)
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    ref_max: float  # max |reference|
    max_abs: float
    max_rel: float
    tolerance: float  # allowed max_abs: rel_tol * ref_max
    worst_index: tuple[int, ...]
    worst_ref: float
    worst_got: float
    passed: bool
    note: str = ""


def compare(ref: np.ndarray, got: np.ndarray, name: str, rel_tol: float) -> OutputDiff:
    if ref.shape != got.shape:
        return OutputDiff(
            name, tuple(ref.shape), float("nan"), float("inf"), float("inf"), 0.0, (), 0.0, 0.0,
            False, f"shape {list(got.shape)} differs from reference {list(ref.shape)}",
        )
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(got, dtype=np.float64)
    same_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    with np.errstate(invalid="ignore"):
        err = np.where(same_nan | same_inf, 0.0, np.abs(a - b))
    err = np.where(np.isnan(err), np.inf, err)  # NaN on one side only: as wrong as it gets
    finite = np.abs(a[np.isfinite(a)])
    ref_max = float(finite.max()) if finite.size else 0.0
    denom = np.maximum(np.abs(np.nan_to_num(a)), REL_FLOOR * ref_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err == 0, 0.0, err / denom)
    if err.size == 0:
        return OutputDiff(name, tuple(a.shape), 0.0, 0.0, 0.0, 0.0, (), 0.0, 0.0, True, "empty")
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    max_abs = float(err[worst])
    tol = rel_tol * ref_max
    return OutputDiff(
        name=name,
        shape=tuple(a.shape),
        ref_max=ref_max,
        max_abs=max_abs,
        max_rel=float(rel.max()),
        tolerance=tol,
        worst_index=tuple(int(i) for i in worst),
        worst_ref=float(a[worst]),
        worst_got=float(b[worst]),
        passed=max_abs <= tol,
    )
