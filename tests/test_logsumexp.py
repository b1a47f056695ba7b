"""logsumexp (NumPy entry): keepdims and out= on every axis (its values and special
values are checked with the softmax family in test_softmax.py and test_properties.py)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import twopass
from conftest import ISA_PARAMS, assert_close, run


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_keepdims_and_out(axis, keepdims):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    y = twopass.logsumexp(x, axis=axis, keepdims=keepdims)
    assert y.shape == np.sum(x, axis=axis, keepdims=keepdims).shape
    assert_close("logsumexp", x, y, axis=axis, keepdims=keepdims)
    out = np.empty(y.shape)
    assert twopass.logsumexp(x, axis=axis, keepdims=keepdims, out=out) is out
    np.testing.assert_array_equal(out, y)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 7)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_result_shape_and_dtype_every_dtype(dtype, shape, keepdims):
    # The halves take another path (computed in float32, rounded back): its result must
    # have the shape NumPy's reductions give, a 0-d array for a 1-d input included.
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    x = np.linspace(-3, 3, int(np.prod(shape))).reshape(shape).astype(dt)
    y = twopass.logsumexp(x, axis=-1, keepdims=keepdims)
    assert y.shape == np.sum(x.astype(np.float64), axis=-1, keepdims=keepdims).shape and y.dtype == dt
    ref = np.log(np.sum(np.exp(x.astype(np.float64)), axis=-1, keepdims=keepdims))
    np.testing.assert_allclose(
        np.asarray(y, np.float64), ref, rtol=2 * float(np.finfo(dt).eps) if dtype != "bfloat16" else 2**-7
    )
    # A 0-d array is a row of one: its logsumexp is itself, 0-d.
    z = twopass.logsumexp(x.reshape(-1)[:1].reshape(()))
    assert z.shape == () and z.dtype == dt and z == x.reshape(-1)[0]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_small_calls_in_one_cpp_call(dtype, monkeypatch):
    """logsumexp of a C-contiguous array of at most 64 KiB over its last axis is one C++
    call (csrc/numpy_rows.cpp, numpy_lse): the bits of the general path, of its shape
    (keepdims or not), a NumPy scalar of x's dtype for a 1-D x without `out`, into a
    fresh array or a fitting `out=` (returned); None (the Python path) otherwise."""
    from twopass import _core, _dispatch, _softmax

    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    if dt == np.dtype(ml_dtypes.bfloat16):
        _softmax.compute("logsumexp", np.zeros(1, dt))  # the general path meets bfloat16 first
    fast = _softmax._numpy_lse
    limit = _softmax._SMALL_SOFTMAX_BYTES // dt.itemsize
    rng = np.random.default_rng(5)
    for shape in [(1,), (7,), (1000,), (3, 65), (2, 1, 33), (limit,), (8, limit // 8), (limit + 1,)]:
        x = (rng.standard_normal(shape) * 10).astype(dt)
        x.flat[0] = -np.inf
        for keepdims in (False, True):
            for threads in (None, 1, 2):
                y = fast(x, -1, keepdims, None, threads)
                if x.size > limit:
                    assert y is None, shape
                    continue
                want = _softmax.compute("logsumexp", x, keepdims=keepdims, threads=threads, isa=_dispatch.ISA)
                if x.ndim == 1 and not keepdims:
                    assert type(y) is dt.type and np.asarray(y).tobytes() == want.tobytes()
                    assert type(twopass.logsumexp(x)) is dt.type
                    continue
                assert type(y) is np.ndarray and y.dtype == dt and y.shape == want.shape and y.flags.c_contiguous
                np.testing.assert_array_equal(y.view(np.uint8), want.view(np.uint8))
                out = np.full(want.shape, np.nan, dt)
                assert fast(x, -1, keepdims, out, threads) is out
                np.testing.assert_array_equal(out.view(np.uint8), want.view(np.uint8))
                assert twopass.logsumexp(x, keepdims=keepdims, out=out, threads=threads) is out
    # the default thread count is read per call (the benchmark swaps it) where the kernels could split
    calls = []
    monkeypatch.setattr(_dispatch, "default_threads", lambda: calls.append(1) or 2)
    x = rng.standard_normal((16, limit // 16)).astype(dt)
    want = _softmax.compute("logsumexp", x, threads=2, isa=_dispatch.ISA)
    np.testing.assert_array_equal(fast(x, -1, False, None, None).view(np.uint8), want.view(np.uint8))
    assert calls == ([1] if limit >= 2 * _core.MIN_PER_THREAD else [])
    monkeypatch.undo()
    x = rng.standard_normal((4, 50)).astype(dt)
    ro = np.empty(4, dt)
    ro.flags.writeable = False
    other = np.float64 if dt == np.float32 else np.float32
    declined = [
        (x, 0, False, None, None),  # not the last axis
        (x, 2, False, None, None),  # out of range: Python raises the AxisError
        (x, None, False, None, None),
        (x.T, -1, False, None, None),  # not C-contiguous
        (x[:, ::2], -1, False, None, None),
        (x.view(np.recarray), -1, False, None, None),
        (np.empty((4, 0), dt), -1, False, None, None),  # empty: -inf by the Python path
        (np.array(1.0, dt), -1, False, None, None),  # 0-d
        (x, -1, 1, None, None),  # keepdims not a bool
        (x, -1, False, None, 0),  # threads < 1: Python raises
        (x, -1, False, None, True),
        (x, -1, False, x, None),  # out is x: Python raises
        (x, -1, False, ro, None),  # read-only out
        (x, -1, False, np.empty(5, dt), None),  # wrong shape
        (x, -1, True, np.empty(4, dt), None),  # keepdims wants (4, 1)
        (x, -1, False, np.empty((4, 2), dt)[:, 0], None),  # not contiguous
        (x, -1, False, np.empty(4, other), None),
        (x, -1, False, x.reshape(-1)[:4], None),  # overlaps x
    ]
    for args in declined:
        assert fast(*args) is None, args[1:]


def _rows_with_special_values(dt, n, rows=300):
    """Rows of n finite values, and rows 5-10 special: all -inf, a NaN, a +inf, one
    finite value among -inf, a maximum that dominates, some -inf among finite values."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((rows, n)) * 4).astype(dt)
    x[5] = -np.inf
    x[6, n // 2] = np.nan
    x[7, n - 1] = np.inf
    x[8, :] = -np.inf
    x[8, n // 3] = 2.5
    x[9, :] = -1000.0 if dt == np.float64 else -200.0
    x[9, 0] = 1.0
    x[10, 1 % n] = -np.inf
    return x


def _check_special_rows(x, y, dt):
    """y = logsumexp over the rows of _rows_with_special_values."""
    assert_close(
        "logsumexp", x.astype(np.float32) if dt.itemsize == 2 else x, y, out_dtype=dt if dt.itemsize == 2 else None
    )
    assert np.isneginf(y[5]) and np.isnan(y[6]) and np.isposinf(y[7])
    assert y[8] == dt.type(2.5) and y[9] == dt.type(1.0)  # (the dominated row: exactly its maximum)
    fin = np.isfinite(x.astype(np.float64)).all(axis=1) | (np.arange(len(x)) == 10)
    assert (y[fin].astype(np.float64) >= x[fin].astype(np.float64).max(axis=1)).all()


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 64, 100, 512, 513, 1024, 1025, 4097])
def test_blocks_of_short_rows(isa, dtype, n):
    """Contiguous rows of at most 4 KiB (in the compute type) take rows_reload's blocks,
    the max-first lse (csrc/softmax.cpp, kLseBlockRowBytes), longer ones the two-pass:
    both within the bounds, rows of special values among finite ones (each flagged and
    redone alone) as torch gives them, lse >= max everywhere and == max where the
    maximum dominates, on every thread count; a strided `out` (not the blocks) agrees."""
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    x = _rows_with_special_values(dt, n)
    for threads in (1, 2):
        y = run("logsumexp", x, isa=isa, threads=threads)
        _check_special_rows(x, y, dt)
        out = np.empty((300, 2), dt)
        run("logsumexp", x, out=out[:, 0], isa=isa, threads=threads)
        eps = 4 * float(ml_dtypes.finfo(dt).eps)  # (the two algorithms' bits differ: both within the bounds)
        np.testing.assert_allclose(out[:, 0].astype(np.float64), y.astype(np.float64), rtol=eps, atol=eps)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("n", [1, 4, 64, 1000])
def test_non_last_axis(isa, dtype, n):
    """logsumexp over a non-last axis runs max-first on its panels (csrc/softmax.cpp,
    run_typed): the same checks on the rows laid out as columns, over axis 0 and over
    the middle axis, on every thread count."""
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    x = _rows_with_special_values(dt, n)
    for threads in (1, 2):
        _check_special_rows(x, run("logsumexp", np.ascontiguousarray(x.T), axis=0, isa=isa, threads=threads), dt)
        x3 = np.ascontiguousarray(x.reshape(3, 100, n).transpose(0, 2, 1))  # (3, n, 100)
        y3 = run("logsumexp", x3, axis=1, isa=isa, threads=threads)
        _check_special_rows(x, y3.reshape(300), dt)
