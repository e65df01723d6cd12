"""The numeric side of folding a per-channel affine map (BatchNormalization) into a layer.

Pure numpy, no onnx: everything is computed in float64 and cast once to the target dtype, so a
float16 model is not folded in float16 arithmetic (a peer does that and gets zero-variance
channels ~9% wrong with epsilon 1e-7).
"""

from __future__ import annotations

import numpy as np


class FoldError(ValueError):
    """The folded values cannot be represented: the fold must be refused."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def bn_scale_shift(
    scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization as y = x * s + t per channel, in float64."""
    scale, bias, mean, var = (np.asarray(a, dtype=np.float64) for a in (scale, bias, mean, var))
    with np.errstate(all="ignore"):
        denom = np.sqrt(var + np.float64(epsilon))
        s = scale / denom
        t = bias - mean * s
    bad = ~(np.isfinite(s) & np.isfinite(t))
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise FoldError(
            "not-finite",
            f"folded scale is not finite in {int(bad.sum())} channel(s), first channel {c}: "
            f"var={float(var[c])!r}, epsilon={float(epsilon):.9g}, scale={float(scale[c])!r}"
        )
    return s, t


def fold_conv(
    weight: np.ndarray,
    conv_bias: np.ndarray | None,
    s: np.ndarray,
    t: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight [M, C/group, k...] and bias [M] followed by y*s+t: the folded pair in float64.

    W' = W * s along the output-channel axis 0; b' = b * s + t (b = 0 when absent).
    """
    w = np.array(weight, dtype=np.float64)  # our own copy: scaled in place (a big weight's
    m = w.shape[0]                           # float64 temporaries are what peak memory is)
    if s.shape != (m,):
        raise ValueError(f"scale has shape {s.shape}, weight has {m} output channels")
    w *= s.reshape((m,) + (1,) * (w.ndim - 1))
    return w, _fold_bias(conv_bias, s, t)


def fold_conv_transpose(
    weight: np.ndarray,
    bias: np.ndarray | None,
    s: np.ndarray,
    t: np.ndarray,
    group: int,
) -> tuple[np.ndarray, np.ndarray]:
    """ConvTranspose weight [C_in, M/group, k...] followed by y*s+t, in float64.

    Output channel o = g * (M/group) + j comes from weight slice [g*C_in/group:(g+1)*C_in/group, j].
    """
    w = np.asarray(weight, dtype=np.float64)
    c_in, per_group, *k = w.shape
    m = per_group * group
    if s.shape != (m,) or c_in % group:
        raise ValueError(f"scale has shape {s.shape}, weight {list(w.shape)} with group {group}")
    grouped = w.reshape(group, c_in // group, per_group, *k)
    scaled = grouped * s.reshape(group, 1, per_group, *([1] * len(k)))
    return scaled.reshape(w.shape), _fold_bias(bias, s, t)


def fold_gemm(
    weight: np.ndarray,
    c: np.ndarray | None,
    s: np.ndarray,
    t: np.ndarray,
    trans_b: bool,
    beta: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Gemm Y = alpha*A*B' + beta*C (B' = B or B^T) followed by y*s+t per column, in float64.

    B' column n is scaled by s[n]; the new C (used with beta = 1) is beta*C*s + t, which keeps
    any C shape that broadcasts to (M, N): (), [1], [N], [1, N], [M, 1] (becomes [M, N]), [M, N].
    """
    w = np.asarray(weight, dtype=np.float64)
    n = w.shape[0] if trans_b else w.shape[1]
    if w.ndim != 2 or s.shape != (n,):
        raise ValueError(f"scale has shape {s.shape}, Gemm weight {list(w.shape)}")
    w_folded = w * (s[:, None] if trans_b else s[None, :])
    if c is None:
        return w_folded, t.copy()
    return w_folded, beta * np.asarray(c, dtype=np.float64) * s + t


def fold_into_next_conv(
    weight: np.ndarray,
    conv_bias: np.ndarray | None,
    s: np.ndarray,
    t: np.ndarray,
    group: int,
) -> tuple[np.ndarray, np.ndarray]:
    """y*s+t per input channel, then Conv with weight [M, C/group, k...]: the folded pair.

    Input channel c = g*(C/group) + j feeds output channels g*(M/group) ... (g+1)*(M/group)-1
    through W[o, j]: W'[o, j] = W[o, j] * s[c]; b'[o] = b[o] + sum_{j,k} W[o, j, k] * t[c].
    Exact only without padding (padded zeros would be shifted by t).
    """
    w = np.asarray(weight, dtype=np.float64)
    m, per_group, *k = w.shape
    if s.shape != (per_group * group,) or m % group:
        raise ValueError(f"scale has shape {s.shape}, weight {list(w.shape)} with group {group}")
    g_of_o = np.arange(m) // (m // group)
    idx = g_of_o[:, None] * per_group + np.arange(per_group)[None, :]  # [M, C/group] -> c
    expand = (slice(None), slice(None)) + (None,) * len(k)
    w_folded = w * s[idx][expand]
    shift = (w * t[idx][expand]).reshape(m, -1).sum(axis=1)
    b = np.zeros(m) if conv_bias is None else np.asarray(conv_bias, dtype=np.float64)
    return w_folded, b + shift


def fold_into_next_gemm(
    weight: np.ndarray,
    c: np.ndarray | None,
    s: np.ndarray,
    t: np.ndarray,
    trans_b: bool,
    alpha: float,
    beta: float,
) -> tuple[np.ndarray, np.ndarray]:
    """y*s+t per column of A, then Gemm alpha*A*B' + beta*C (transA = 0): the folded B and C.

    alpha*(A*s + t)*B' = alpha*A*(diag(s)*B') + alpha*(t*B'): B's K axis is scaled by s and the
    new C (used with beta = 1) is beta*C + alpha*(t @ B').
    """
    w = np.asarray(weight, dtype=np.float64)
    b_mat = w.T if trans_b else w  # B' of shape (K, N)
    if w.ndim != 2 or s.shape != (b_mat.shape[0],):
        raise ValueError(f"scale has shape {s.shape}, Gemm weight {list(w.shape)}")
    w_folded = w * (s[None, :] if trans_b else s[:, None])
    shift = alpha * (t @ b_mat)
    if c is None:
        return w_folded, shift
    return w_folded, beta * np.asarray(c, dtype=np.float64) + shift


# From this size on, a Conv weight is folded by fold_conv_cast: no float64 copy of it.
SLICED_FROM = 1 << 22
_SLICE = 1 << 19  # elements checked for finiteness at a time


def fold_conv_cast(weight: np.ndarray, s: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """cast_checked(fold_conv(weight, ., s, .)[0], dtype): the same values, each product
    computed in float64 and cast as it is written, so a big weight has no float64 copy (for a
    100 MB weight that copy was 200 MB and 2 s of page faults) and is read and written once."""
    w = np.asarray(weight)
    m = w.shape[0]
    if s.shape != (m,):
        raise ValueError(f"scale has shape {s.shape}, weight has {m} output channels")
    out = np.empty(w.shape, dtype)
    row = max(1, w[:1].size)
    with np.errstate(over="ignore"):  # detected below, and reported as a refusal
        # One ufunc: float64 products (as astype(float64) * s), cast as astype casts.
        np.multiply(w, s.reshape(-1, *(1,) * (w.ndim - 1)), out=out, dtype=np.float64,
                    casting="unsafe")
    flat = out.reshape(-1)
    if all(np.isfinite(flat[k:k + _SLICE]).all() for k in range(0, flat.size, _SLICE)):
        return out
    bad = ~np.isfinite(flat)
    i = int(np.flatnonzero(bad)[0])
    value = float(w.reshape(-1)[i]) * float(s[i // row])
    raise FoldError(
        "overflow",
        f"folded weight overflows {np.dtype(dtype).name}: {int(bad.sum())} value(s), "
        f"e.g. {value:.6g}",
    )


def fold_conv_bias(bias: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """fold_conv's folded bias."""
    return _fold_bias(bias, s, t)


def _fold_bias(bias: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    b = np.zeros(s.shape) if bias is None else np.asarray(bias, dtype=np.float64)
    return b * s + t


def cast_checked(values: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """Cast float64 values to dtype once; refuse if any value is not finite there (overflow)."""
    with np.errstate(over="ignore"):  # detected below, and reported as a refusal
        out = values.astype(dtype)
    native = np.dtype(dtype) in (np.float16, np.float32, np.float64)
    flat = out.reshape(-1)
    step = 1 << 20  # checked in slices: no mask the size of a big weight
    if native and all(np.isfinite(flat[k:k + step]).all() for k in range(0, flat.size, step)):
        return out
    bad = ~np.isfinite(out if native else out.astype(np.float64))
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise FoldError(
            "overflow",
            f"folded {what} overflows {np.dtype(dtype).name}: "
            f"{int(bad.sum())} value(s), e.g. {float(values.reshape(-1)[i]):.6g}"
        )
    return out


def fold_conv_batch(
    weights: list[np.ndarray],
    biases: list[np.ndarray | None],
    params: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    epsilons: list[float],
    dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Many Conv → BN folds at once, each exactly bn_scale_shift + fold_conv + cast_checked
    (the same float64 operations element by element, so the same bits): the folded weights
    and biases, each flat and concatenated in the given order; None when any value is not
    finite, for the one-at-a-time path to refuse with its reason.

    weights[k] is flat, of params[k][0].size output channels; params[k] is (scale, B, mean,
    var), each of that many channels."""
    channels = np.fromiter((p[0].size for p in params), np.int64, len(params))
    per_channel = np.fromiter((w.size for w in weights), np.int64, len(weights)) // channels
    scale, shift, mean, var = (
        np.concatenate([p[i] for p in params]).astype(np.float64) for i in range(4)
    )
    eps = np.repeat(np.array(epsilons, dtype=np.float64), channels)
    with np.errstate(all="ignore"):
        s = scale / np.sqrt(var + eps)
        t = shift - mean * s
        b = np.concatenate([np.zeros(c) if x is None else x.astype(np.float64)
                            for x, c in zip(biases, channels.tolist())])
        b = b * s + t
        w = np.concatenate(weights).astype(np.float64)
        w *= np.repeat(s, np.repeat(per_channel, channels))
        w_out, b_out = w.astype(dtype), b.astype(dtype)
    if not (np.isfinite(s).all() and np.isfinite(t).all() and np.isfinite(w_out).all()
            and np.isfinite(b_out).all()):
        return None
    return w_out, b_out
