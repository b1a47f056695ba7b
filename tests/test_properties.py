"""Hypothesis: random shapes (0, 1, every tail length up to two AVX-512 vectors + 1),
axes, negative and non-unit strides, misaligned starts, dtypes, algorithms and ISAs,
against the reference; plus the properties softmax must have."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import twopass
from conftest import SUPPORTED, assert_close, run

OPS = ("softmax", "log_softmax", "logsumexp")


@st.composite
def arrays(draw):
    """An array view with 1-3 dims, some dims strided or reversed, starting at an
    address that is not vector-aligned, and values from mild to extreme."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(0, 34 if ndim == 1 else 9)) for _ in range(ndim))
    steps = tuple(draw(st.sampled_from([1, 1, 2, -1, -3])) for _ in range(ndim))
    offset = draw(st.integers(0, 7))  # elements: misaligns the first row
    scale = draw(st.sampled_from([1.0, 10.0, 100.0, 3000.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    full = tuple(max(1, s * abs(k)) for s, k in zip(shape, steps))
    base = (rng.standard_normal(int(np.prod(full)) + offset) * scale).astype(dtype)
    if draw(st.booleans()) and base.size > offset:  # sprinkle -inf (masked logits)
        base[offset + rng.integers(0, base.size - offset, size=max(1, base.size // 5))] = -np.inf
    x = base[offset:].reshape(full)
    x = x[tuple(slice(None, s * abs(k), k) if k > 0 else slice(None, None, k) for s, k in zip(shape, steps))]
    x = x[tuple(slice(0, s) for s in shape)]
    return x


@settings(max_examples=300, deadline=None)
@given(
    x=arrays(),
    op=st.sampled_from(OPS),
    algorithm=st.sampled_from(twopass.ALGORITHMS),
    isa=st.sampled_from(SUPPORTED),
    data=st.data(),
)
def test_matches_reference(x, op, algorithm, isa, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    threads = data.draw(st.sampled_from([1, 2]))
    y = run(op, x, axis=axis, algorithm=algorithm, isa=isa, threads=threads)
    assert_close(op, x, y, axis=axis)


@settings(max_examples=200, deadline=None)
@given(
    x=arrays(),
    op=st.sampled_from(["softmax", "log_softmax"]),
    algorithm=st.sampled_from(twopass.ALGORITHMS),
    isa=st.sampled_from(SUPPORTED),
    data=st.data(),
)
def test_in_place_is_the_fresh_call(x, op, algorithm, isa, data):
    """out=x gives the bits of a call into a fresh output, also in rows the kernels redo
    from x (NaN, +inf, only -inf; values beyond two_pass's accurate domain at scale
    3000): nothing reads x after a pass has written over it."""
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    threads = data.draw(st.sampled_from([1, 2]))
    special = data.draw(st.sampled_from([None, np.nan, np.inf, -np.inf]))
    rows = np.moveaxis(x, axis, -1)  # a view of x: its rows along `axis`
    if rows.size and special is not None:
        row = rows[tuple(data.draw(st.integers(0, s - 1)) for s in rows.shape[:-1])]  # a view: one row
        if special == -np.inf:
            row[...] = -np.inf
        else:
            row[data.draw(st.integers(0, row.size - 1))] = special
    want = run(op, x, axis=axis, algorithm=algorithm, isa=isa, threads=threads)
    assert run(op, x, axis=axis, out=x, algorithm=algorithm, isa=isa, threads=threads) is x
    np.testing.assert_array_equal(x, want)


@settings(max_examples=150, deadline=None)
@given(x=arrays(), algorithm=st.sampled_from(twopass.ALGORITHMS), isa=st.sampled_from(SUPPORTED))
def test_softmax_properties(x, algorithm, isa):
    y = run("softmax", x, axis=-1, algorithm=algorithm, isa=isa)
    finite_rows = np.isfinite(x).any(-1) & ~np.isnan(x).any(-1) & ~(x == np.inf).any(-1)
    if x.shape[-1] == 0:
        return
    ok = y[finite_rows]
    assert np.all((ok >= 0) & (ok <= 1))
    n = x.shape[-1]
    tol = 8 * n * np.finfo(x.dtype).eps
    np.testing.assert_allclose(ok.sum(-1, dtype=np.float64), 1.0, rtol=0, atol=max(tol, 1e-6))
    # Shift invariance: softmax(x + c) == softmax(x), c exactly representable.
    c = x.dtype.type(0.5)
    with np.errstate(invalid="ignore"):
        y2 = run("softmax", x + c, axis=-1, algorithm=algorithm, isa=isa)
    np.testing.assert_allclose(y2[finite_rows], ok, rtol=1e-4 if x.dtype == np.float32 else 1e-12, atol=1e-30)


# ----------------------------------------------------------------------------------
# Invariants that code downstream relies on (samplers, NLL >= 0, assertions), on every
# algorithm, ISA, dtype and thread count: log_softmax <= 0; exactly 0 at a maximum
# that dominates its row (every other entry -inf or more than DOMINATED[dtype] below
# it, so exp(other - max) is below half the smallest float32/float64 subnormal) and in
# a row of one; max <= logsumexp, equal when the maximum dominates; 0 <= softmax <= 1;
# cross_entropy >= 0.
# ----------------------------------------------------------------------------------
DOMINATED = {np.float32: 104.0, np.float64: 746.0}
DTYPES = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)


def _compute_type(dtype):
    return np.float64 if dtype == np.float64 else np.float32


@st.composite
def rows(draw):
    """(x, dominated): a batch of rows, optionally long enough that 2 threads split it
    (by rows, or one row along its axis), values mild to huge, -inf sprinkled; with
    `dominated`, every row's maximum dominates the rest."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(
        st.sampled_from([(1, 1), (3, 1), (2, 2), (4, 17), (5, 33), (2, 100), (1, 1000), (64, 1024), (1, 1 << 19)])
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 10.0, 300.0, 3000.0]))
    x = rng.standard_normal(shape) * scale
    if draw(st.booleans()):
        x[rng.random(shape) < 0.3] = -np.inf
    dominated = draw(st.booleans())
    if dominated:
        gap = DOMINATED[_compute_type(dtype)] * draw(st.sampled_from([1.01, 1.5, 10.0]))
        huge = {np.float16: [], np.float64: [1e300, -1e300]}.get(dtype, [1e30, -1e30, 3e38])
        top = draw(st.sampled_from([0.0, 5.0, -300.0, 1e4, -3e4, *huge]))
        width = max(abs(top) * 1e-2, 2 * gap)  # others lie in [top - width - gap, top - gap]
        x = top - gap - rng.random(shape) * width
        x[rng.random(shape) < 0.3] = -np.inf
        where = rng.integers(0, shape[-1], size=shape[0])
        x[np.arange(shape[0]), where] = top
    x = x.astype(dtype)
    if dominated:  # checked after rounding to the dtype: the gap and a single maximum must survive it
        xf = x.astype(np.float64)
        m = xf.max(-1, keepdims=True)
        others = np.where(xf == m, -np.inf, xf)
        dominated = bool(((m - others) > DOMINATED[_compute_type(dtype)]).all() and ((xf == m).sum(-1) == 1).all())
    return x, dominated


def _ordinary(x: np.ndarray) -> np.ndarray:
    """Rows with no NaN, no +inf and at least one finite entry (the others give NaN)."""
    xf = x.astype(np.float64)
    return ~np.isnan(xf).any(-1) & ~(xf == np.inf).any(-1) & (xf > -np.inf).any(-1)


@settings(max_examples=250, deadline=None)
@given(
    case=rows(),
    algorithm=st.sampled_from(twopass.ALGORITHMS),
    isa=st.sampled_from(SUPPORTED),
    threads=st.sampled_from([1, 2]),
)
def test_invariants(case, algorithm, isa, threads):
    x, dominated = case
    kw = dict(algorithm=algorithm, isa=isa, threads=threads)
    ok = _ordinary(x)
    xf = x.astype(np.float64)
    mx = xf.max(-1)

    ls = run("log_softmax", x, **kw).astype(np.float64)
    assert np.all(ls[ok] <= 0), f"log_softmax > 0: max {ls[ok].max()!r}"
    lse = run("logsumexp", x, **kw).astype(np.float64)
    assert np.all(lse[ok] >= mx[ok]), f"logsumexp below the maximum by {np.max(mx[ok] - lse[ok])!r}"
    sm = run("softmax", x, **kw).astype(np.float64)
    assert np.all((sm[ok] >= 0) & (sm[ok] <= 1)), f"softmax outside [0, 1]: {sm[ok].min()!r} {sm[ok].max()!r}"

    at_max = xf == mx[:, None]
    if dominated or x.shape[-1] == 1:
        np.testing.assert_array_equal(ls[ok][at_max[ok]], 0.0)
        np.testing.assert_array_equal(lse[ok], mx[ok])
        # softmax is 1 there within one rounding (two_pass scales by a rounded 1/sum)
        eps = float(ml_dtypes.finfo(x.dtype).eps)
        assert np.all(sm[ok][at_max[ok]] >= 1 - eps)


@settings(max_examples=120, deadline=None)
@given(
    case=rows(),
    algorithm=st.sampled_from(["auto", "two_pass", "three_pass_reload"]),
    isa=st.sampled_from(SUPPORTED),
    smoothing=st.sampled_from([0.0, 0.1]),
    z_loss=st.sampled_from([0.0, 1e-4]),
)
def test_cross_entropy_is_never_negative(case, algorithm, isa, smoothing, z_loss):
    x, dominated = case
    ok = _ordinary(x)
    rng = np.random.default_rng(0)
    # The target at the row maximum in dominated rows (the loss is then exactly 0), else random.
    target = x.astype(np.float64).argmax(-1) if dominated else rng.integers(0, x.shape[-1], size=x.shape[0])
    loss, grad = twopass.cross_entropy(
        x,
        target,
        reduction="none",
        label_smoothing=smoothing,
        z_loss=z_loss,
        return_grad=True,
        algorithm=algorithm,
        isa=isa,
    )
    loss = np.asarray(loss, dtype=np.float64)
    finite_target = np.isfinite(x.astype(np.float64)[np.arange(x.shape[0]), target])
    sel = ok & finite_target
    assert np.all(loss[sel] >= 0), f"cross_entropy < 0: {loss[sel].min()!r}"
    if dominated and smoothing == 0 and z_loss == 0:
        np.testing.assert_array_equal(loss[ok], 0.0)
