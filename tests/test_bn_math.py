"""The folding math alone, against direct float64 computations (hypothesis)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxfold.fold import bn_math

DTYPES = [np.float16, np.float32, np.float64, ml_dtypes.bfloat16]


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, group: int) -> np.ndarray:
    """Direct grouped 1-D convolution, no padding, in float64: y[o, t]."""
    length = x.shape[1]
    m, cpg, k = w.shape
    opg = m // group
    y = np.zeros((m, length - k + 1))
    for o in range(m):
        g = o // opg
        for t in range(length - k + 1):
            y[o, t] = np.sum(w[o] * x[g * cpg:(g + 1) * cpg, t:t + k]) + b[o]
    return y


@st.composite
def layers(draw):
    group = draw(st.integers(1, 3))
    cpg = draw(st.integers(1, 3))
    opg = draw(st.integers(1, 3))
    m = group * opg
    k = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Variances from denormal-small to large; a zero variance needs a positive epsilon.
    var = 10.0 ** rng.uniform(-12, 2, m)
    if draw(st.booleans()):
        var[rng.integers(m)] = 0.0
    eps = draw(st.sampled_from([1e-3, 1e-5, 1e-7, 1e-12]))
    return {
        "x": rng.standard_normal((group * cpg, k + 4)),
        "w": rng.standard_normal((m, cpg, k)),
        "b": rng.standard_normal(m) if draw(st.booleans()) else None,
        "scale": rng.uniform(0.5, 1.5, m) * rng.choice([-1, 1], m),
        "B": rng.standard_normal(m),
        "mean": rng.standard_normal(m),
        "var": var,
        "eps": eps,
        "group": group,
    }


@settings(max_examples=200, deadline=None)
@given(layers())
def test_folded_conv_equals_conv_then_bn(p):
    """conv(x, W') + b' == BN(conv(x, W) + b), computed directly in float64, any group."""
    b = np.zeros(p["w"].shape[0]) if p["b"] is None else p["b"]
    y = conv1d(p["x"], p["w"], b, p["group"])
    bn = (y - p["mean"][:, None]) / np.sqrt(p["var"][:, None] + p["eps"])
    bn = bn * p["scale"][:, None] + p["B"][:, None]
    s, t = bn_math.bn_scale_shift(p["scale"], p["B"], p["mean"], p["var"], p["eps"])
    w2, b2 = bn_math.fold_conv(p["w"], p["b"], s, t)
    y2 = conv1d(p["x"], w2, b2, p["group"])
    np.testing.assert_allclose(y2, bn, rtol=1e-9, atol=1e-9 * np.abs(bn).max())


@settings(max_examples=200, deadline=None)
@given(layers(), st.sampled_from(DTYPES))
def test_cast_once_matches_direct_formula(p, dtype):
    """The stored weights are the float64 formula rounded once to the target dtype."""
    s_direct = p["scale"] / np.sqrt(p["var"] + p["eps"])
    w_direct = p["w"] * s_direct[:, None, None]
    b0 = np.zeros(len(s_direct)) if p["b"] is None else p["b"]
    b_direct = (b0 - p["mean"]) * s_direct + p["B"]
    s, t = bn_math.bn_scale_shift(p["scale"], p["B"], p["mean"], p["var"], p["eps"])
    w64, b64 = bn_math.fold_conv(p["w"], p["b"], s, t)
    np.testing.assert_allclose(w64, w_direct, rtol=1e-13)
    np.testing.assert_allclose(b64, b_direct, rtol=1e-9, atol=1e-9 * np.abs(b_direct).max())
    try:
        w = bn_math.cast_checked(w64, np.dtype(dtype), "weight")
    except bn_math.FoldError as e:
        assert e.code == "overflow"
        assert np.abs(w_direct).max() > float(ml_dtypes.finfo(dtype).max) * 0.99
        return
    assert w.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(w, w64.astype(dtype))
    # One rounding: within half an ulp (relative) of the exact value, where not subnormal.
    fi = ml_dtypes.finfo(dtype)
    normal = np.abs(w_direct) >= float(fi.tiny)
    err = np.abs(w.astype(np.float64) - w_direct)[normal]
    assert np.all(err <= np.abs(w_direct)[normal] * float(fi.eps) / 2 * (1 + 1e-9))


@pytest.mark.parametrize(
    ("var", "eps"), [(-1.0, 1e-5), (0.0, 0.0), (np.nan, 1e-5)]
)
def test_not_finite_is_refused(var, eps):
    with pytest.raises(bn_math.FoldError) as e:
        bn_math.bn_scale_shift(np.ones(3), np.zeros(3), np.zeros(3), np.array([1.0, var, 1.0]), eps)
    assert e.value.code == "not-finite"
    assert "channel 1" in str(e.value)


def test_float16_overflow_is_refused():
    with pytest.raises(bn_math.FoldError, match="overflows float16: 1 value"):
        bn_math.cast_checked(np.array([1.0, 65520.0, -3.0]), np.dtype(np.float16), "weight")
    # 65504 is float16's max and still fits; 65519 rounds down to it.
    assert bn_math.cast_checked(np.array([65504.0, 65519.0]), np.dtype(np.float16), "w")[1] == 65504


def test_denormal_variance_folds():
    """Running variances of 5.6e-45 occur in real (Paddle) models: epsilon keeps s finite."""
    s, _ = bn_math.bn_scale_shift(np.ones(1), np.zeros(1), np.zeros(1),
                                  np.array([5.6e-45], dtype=np.float32), 1e-5)
    assert s[0] == pytest.approx(1 / np.sqrt(1e-5), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_conv_transpose_scales_the_right_slices(group, cpg, opg, seed):
    """Output channel o = g*(M/group) + j scales weight slice [g*C/group:(g+1)*C/group, j]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((group * cpg, opg, 2, 3))
    m = group * opg
    s, t, b = rng.standard_normal(m), rng.standard_normal(m), rng.standard_normal(m)
    w2, b2 = bn_math.fold_conv_transpose(w, b, s, t, group)
    expect = w.copy()
    for o in range(m):
        g, j = divmod(o, opg)
        expect[g * cpg:(g + 1) * cpg, j] *= s[o]
    np.testing.assert_array_equal(w2, expect)
    np.testing.assert_allclose(b2, b * s + t, rtol=1e-15)


@settings(max_examples=150, deadline=None)
@given(layers())
def test_bn_folded_into_next_conv(p):
    """conv(x*s + t, W) + b == conv(x, W') + b' for the grouped, unpadded 1-D conv."""
    w = p["w"]
    b = np.zeros(w.shape[0]) if p["b"] is None else p["b"]
    c_in = w.shape[1] * p["group"]
    rng = np.random.default_rng(int(abs(w).sum() * 1e6) % 2**32)
    s, t = rng.uniform(-2, 2, c_in), rng.standard_normal(c_in)
    x = rng.standard_normal((c_in, w.shape[2] + 4))
    direct = conv1d(x * s[:, None] + t[:, None], w, b, p["group"])
    w2, b2 = bn_math.fold_into_next_conv(w, p["b"], s, t, p["group"])
    np.testing.assert_allclose(conv1d(x, w2, b2, p["group"]), direct, rtol=1e-9,
                               atol=1e-9 * np.abs(direct).max())


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.booleans(), st.sampled_from([None, (), (1,), "N"]),
       st.integers(0, 2**32 - 1))
def test_bn_folded_into_next_gemm(k, n, trans_b, c_kind, seed):
    """alpha*(A*s + t) @ B' + beta*C == alpha*A @ B'' + C'' (beta 1), directly in float64."""
    rng = np.random.default_rng(seed)
    a, s, t = rng.standard_normal((3, k)), rng.uniform(-2, 2, k), rng.standard_normal(k)
    w = rng.standard_normal((n, k) if trans_b else (k, n))
    c = None if c_kind is None else rng.standard_normal((n,) if c_kind == "N" else c_kind)
    alpha, beta = rng.uniform(0.5, 2), rng.uniform(0.5, 2)
    b_mat = w.T if trans_b else w
    direct = alpha * (a * s + t) @ b_mat + (0 if c is None else beta * c)
    w2, c2 = bn_math.fold_into_next_gemm(w, c, s, t, trans_b, alpha, beta)
    got = alpha * a @ (w2.T if trans_b else w2) + c2
    np.testing.assert_allclose(got, direct, rtol=1e-10, atol=1e-10 * np.abs(direct).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, "bfloat16"])
@pytest.mark.parametrize("shape", [(7, 4, 3, 3), (5, 3, 2), (3, 2, 2, 2, 2)])
def test_sliced_conv_fold_is_the_whole_fold(dtype, shape, monkeypatch):
    """fold_conv_cast (big weights, one pass with no float64 copy) gives fold_conv's values
    cast once: the same bits, checked for finiteness in slices of any size."""
    import ml_dtypes

    dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    monkeypatch.setattr(bn_math, "_SLICE", 40)
    rng = np.random.default_rng(3)
    w = rng.normal(size=shape).astype(dtype)
    s = rng.uniform(0.5, 2.0, shape[0])
    want = bn_math.cast_checked(bn_math.fold_conv(w, None, s, np.zeros(shape[0]))[0], dtype,
                                "weight")
    got = bn_math.fold_conv_cast(w, s, dtype)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_sliced_conv_fold_refuses_overflow():
    w = np.full((3, 2, 1, 1), 6e4, np.float16)
    with pytest.raises(bn_math.FoldError, match="overflows float16: 2 value"):
        bn_math.fold_conv_cast(w, np.array([1.0, 2.0, 1.0]), np.float16)
