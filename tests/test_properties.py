"""Hypothesis: random shapes (0, 1, every tail length up to two AVX-512 vectors + 1),
axes, negative and non-unit strides, misaligned starts, dtypes, algorithms and ISAs,
against the reference; plus the properties softmax must have."""

from __future__ import annotations

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
