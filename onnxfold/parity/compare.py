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
    tolerance: float  # allowed max_abs: atol + rtol * ref_max
    worst_index: tuple[int, ...]
    worst_ref: float
    worst_got: float
    passed: bool
    note: str = ""
    mean_abs: float = 0.0
    cosine: float = 1.0  # cosine similarity of the flattened outputs (1: same direction)
    topk: int = 0  # K of the top-K summary (0: none asked for)
    topk_agree: float = 1.0  # share of the reference's top-K elements also in the candidate's
    topk_same_order: bool = True  # the same K indices in the same order
    trial: int = 0  # which input set (of --trials) this comparison is from


def compare(
    ref: np.ndarray, got: np.ndarray, name: str, rel_tol: float, atol: float = 0.0, topk: int = 0
) -> OutputDiff:
    """Pass when max |got - ref| <= atol + rel_tol * max|ref| (NaN/inf must match exactly)."""
    if ref.shape != got.shape:
        return OutputDiff(
            name, tuple(ref.shape), float("nan"), float("inf"), float("inf"), 0.0, (), 0.0, 0.0,
            False, f"shape {list(got.shape)} differs from reference {list(ref.shape)}",
            mean_abs=float("inf"), cosine=0.0,
        )
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(got, dtype=np.float64)
    if a.size == 0:
        return OutputDiff(name, tuple(a.shape), 0.0, 0.0, 0.0, atol, (), 0.0, 0.0, True, "empty")
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
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    max_abs = float(err[worst])
    tol = atol + rel_tol * ref_max
    k = min(topk, a.size)
    agree, same_order = _topk(a, b, k) if k else (1.0, True)
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
        mean_abs=float(err.mean()),
        cosine=cosine(a, b),
        topk=k,
        topk_agree=agree,
        topk_same_order=same_order,
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity over the elements finite on both sides; 1.0 when both are all zero."""
    ok = np.isfinite(a) & np.isfinite(b)
    x, y = a[ok], b[ok]
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(np.dot(x, y) / (nx * ny))


def _topk(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, bool]:
    """Do the k largest elements (e.g. detection scores) sit at the same places?"""
    fa, fb = np.nan_to_num(a.ravel(), nan=-np.inf), np.nan_to_num(b.ravel(), nan=-np.inf)
    # Stable sort on the negated values: ties keep index order, so the result is deterministic.
    ia = np.argsort(-fa, kind="stable")[:k]
    ib = np.argsort(-fb, kind="stable")[:k]
    return len(set(ia.tolist()) & set(ib.tolist())) / k, bool(np.array_equal(ia, ib))
