"""twopass.scipy against scipy.special (when installed) and the float64 reference:
SciPy's signatures and defaults, weights `b` of any sign with zeros and broadcasting,
return_sign, special values, precision near 0, scalars, and complex input refused.
SciPy's own test file runs against it too: tests/scipy_compat/run.py (CI)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twopass
import twopass.scipy as tps
from twopass import reference

F64 = float(np.finfo(np.float64).eps)


def test_signatures_are_scipys():
    for f in (tps.softmax, tps.log_softmax):
        assert [(p.name, p.default) for p in inspect.signature(f).parameters.values()] == [
            ("x", inspect.Parameter.empty),
            ("axis", None),
        ]
    params = inspect.signature(tps.logsumexp).parameters
    assert list(params) == ["a", "axis", "b", "keepdims", "return_sign"]
    assert [p.default for p in list(params.values())[1:]] == [None, None, False, False]
    special = pytest.importorskip("scipy.special")
    for name in tps.__all__:
        assert list(inspect.signature(getattr(tps, name)).parameters) == list(
            inspect.signature(getattr(special, name)).parameters
        )


def test_axis_none_is_the_whole_array():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)) * 10
    flat = x.reshape(-1)
    np.testing.assert_allclose(tps.softmax(x), reference.softmax(flat).reshape(x.shape), rtol=64 * F64)
    np.testing.assert_allclose(tps.log_softmax(x), reference.log_softmax(flat).reshape(x.shape), rtol=64 * F64)
    r = tps.logsumexp(x)
    assert type(r) is np.float64
    np.testing.assert_allclose(r, reference.logsumexp(flat), rtol=32 * F64)
    assert tps.logsumexp(x, keepdims=True).shape == (1, 1, 1)


def test_weights_against_reference():
    # b * exp(a) summed in float64 from the reference's max-shifted terms.
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 50)) * 5
    b = rng.uniform(0.1, 3, (4, 50))
    m = a.max(axis=1, keepdims=True)
    want = np.log(np.sum(b * np.exp(a - m), axis=1)) + m[:, 0]
    np.testing.assert_allclose(tps.logsumexp(a, axis=1, b=b), want, rtol=32 * F64)
    # A negative weight on the largest term: the sum stays positive (SciPy gh-22903).
    a = np.array([3.06409428, 0.37251854, 3.87471931])
    b = np.array([1.88190708, 2.84174795, -0.85016884])
    want = np.log(np.sum(b * np.exp(a)))
    np.testing.assert_allclose(tps.logsumexp(a, b=b), want, rtol=64 * F64)
    r, s = tps.logsumexp(a, b=-b, return_sign=True)
    assert s == -1.0 and abs(r - want) <= 64 * F64 * abs(want)
    assert np.isnan(tps.logsumexp(a, b=-b))  # a negative sum without return_sign: NaN


def test_weights_special_cases():
    # A zero weight drops its term whatever a is there (SciPy's rule).
    assert tps.logsumexp([1.0, np.inf, np.nan], b=[1, 0, 0]) == 1.0
    # Terms that cancel exactly: log 0 = -inf, sign 0.
    r, s = tps.logsumexp([1, 1], b=[1, -1], return_sign=True)
    assert r == -np.inf and s == 0
    # Infinite terms keep the sign of their weight (SciPy gh-23548); inf - inf is NaN.
    assert tps.logsumexp([np.inf], b=[-1.0], return_sign=True) == (np.inf, -1.0)
    assert tps.logsumexp([np.inf], return_sign=True) == (np.inf, 1.0)
    r, s = tps.logsumexp([np.inf, np.inf], b=[1, -1], return_sign=True)
    assert np.isnan(r) and np.isnan(s)
    # A NaN weight, a NaN value: NaN.
    assert np.isnan(tps.logsumexp([1.0, 2.0], b=[1.0, np.nan]))
    assert np.isnan(tps.logsumexp([1.0, np.nan], b=[1.0, -1.0]))
    # Empty: -inf, and SciPy's sign of an empty sum, -1.
    assert tps.logsumexp([]) == -np.inf
    assert tps.logsumexp([], b=[], return_sign=True) == (-np.inf, -1.0)
    assert tps.logsumexp(np.zeros((0, 3)), axis=0, return_sign=True)[1].tolist() == [-1.0] * 3
    # Only -inf: -inf, sign 0.
    assert tps.logsumexp([-np.inf, -np.inf], return_sign=True) == (-np.inf, 0.0)


def test_broadcasting_and_dtypes():
    a = np.zeros((4, 1, 2, 1))
    b = np.ones((3, 1, 5))
    r = tps.logsumexp(a, b=b, axis=(0, 3), keepdims=True)
    assert r.shape == (1, 3, 2, 1)
    np.testing.assert_allclose(r, np.log(20.0), rtol=4 * F64)
    for da, db, want in [
        (np.float32, np.float32, np.float32),
        (np.float32, np.int32, np.float64),  # NumPy's promotion, as SciPy
        (np.int32, np.int64, np.float64),
        (np.float32, None, np.float32),
        (np.int8, None, np.float64),
        (np.bool_, None, np.float64),
    ]:
        a = np.array([2, 1], da)
        b = None if db is None else np.array([1, 1], db)
        assert tps.logsumexp(a, b=b).dtype == want


def test_scalars_and_lists():
    assert type(tps.softmax(1000)) is np.float64 and tps.softmax(1000) == 1.0
    assert type(tps.log_softmax(1.0)) is np.float64 and tps.log_softmax(1.0) == 0.0
    np.testing.assert_array_equal(tps.log_softmax([1000, 1]), [0.0, -999.0])
    assert tps.logsumexp(1) == tps.logsumexp(np.array([1]))
    r, s = tps.logsumexp([1, 2], b=[1, 1], return_sign=True)
    assert type(r) is np.float64 and type(s) is np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_precision_near_zero(dtype):
    # log(1 + e^-40): the kernel's max + log(s) rounds it to 0; SciPy's gh-18295 formula
    # (the maxima taken out of the sum) keeps it to a few ULPs.
    a = np.array([0.0, -40.0], dtype)
    want = np.log1p(np.exp(-40.0))
    assert abs(tps.logsumexp(a) - want) <= 4 * np.finfo(dtype).eps * want
    rows = np.array([[0.0, -40.0], [1.0, 2.0], [-0.5, -0.5]], dtype)  # refined rows and others
    ref = [want, 2 + np.log1p(np.exp(-1.0)), np.log(2) - 0.5]
    np.testing.assert_allclose(tps.logsumexp(rows, axis=1), ref, rtol=8 * np.finfo(dtype).eps)


def test_complex_raises_type_error():
    for x in ([1 + 1j, 2], np.zeros(3, np.complex64), 1j):
        for f in (tps.softmax, tps.log_softmax, tps.logsumexp):
            with pytest.raises(TypeError, match="complex"):
                f(x)
    with pytest.raises(TypeError, match="complex"):
        tps.logsumexp([1.0, 2.0], b=[1j, 1])


def test_inputs_not_written():
    a = np.array([5.0, 4.0])
    b = np.array([3.0, -2.0])
    tps.logsumexp(a, b=b, return_sign=True)
    tps.softmax(a)
    assert a.tolist() == [5.0, 4.0] and b.tolist() == [3.0, -2.0]


# ----------------------------------------------------------------------------------
# Against scipy.special, with hypothesis.
# ----------------------------------------------------------------------------------
special = pytest.importorskip("scipy.special")

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)


@st.composite
def axis_for(draw, ndim):
    return draw(
        st.none()
        | st.integers(-ndim, ndim - 1)
        | st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)
    )


@settings(max_examples=80, deadline=None)
@given(data=st.data(), shape=shapes, dtype=st.sampled_from([np.float32, np.float64, np.int32]))
def test_softmax_family_matches_scipy(data, shape, dtype):
    elements = st.integers(-100, 100) if dtype == np.int32 else st.floats(-80, 80, width=32)
    x = data.draw(hnp.arrays(dtype, shape, elements=elements))
    axis = data.draw(axis_for(len(shape)))
    rtol = 64 * float(np.finfo(np.float32 if dtype == np.float32 else np.float64).eps)
    for name in ("softmax", "log_softmax"):
        got, want = getattr(tps, name)(x, axis=axis), getattr(special, name)(x, axis=axis)
        assert np.asarray(got).dtype == np.asarray(want).dtype
        # log_softmax: x - lse cancels; softmax: a subnormal result is off by an ulp of the
        # subnormals (exp(-101.125) / 30 in float32, 6.7e-46, rounds to 0 and gave 1.4e-45)
        tiny = 4 * float(np.finfo(np.asarray(want).dtype).smallest_subnormal)
        atol = rtol * (np.abs(x).max() + 1) if name == "log_softmax" else tiny
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    keepdims = data.draw(st.booleans())
    got, want = tps.logsumexp(x, axis=axis, keepdims=keepdims), special.logsumexp(x, axis=axis, keepdims=keepdims)
    assert type(got) is type(want) and np.shape(got) == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    shape=shapes,
    dtype=st.sampled_from([np.float32, np.float64]),
    keepdims=st.booleans(),
)
def test_weighted_logsumexp_matches_scipy(data, shape, dtype, keepdims):
    a = data.draw(hnp.arrays(dtype, shape, elements=st.floats(-30, 30, width=32) | st.just(-np.inf)))
    bshape = data.draw(hnp.broadcastable_shapes(shape, min_side=1))
    b = data.draw(hnp.arrays(np.float64, bshape, elements=st.sampled_from([0.0, 1.0, -1.0, 2.5, -0.3, 1e-3])))
    axis = data.draw(axis_for(len(shape)))
    got_r, got_s = tps.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    want_r, want_s = special.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    assert np.shape(got_r) == np.shape(want_r) and np.asarray(got_r).dtype == np.asarray(want_r).dtype
    got_r, got_s, want_r, want_s = map(np.atleast_1d, (got_r, got_s, want_r, want_s))
    # The error of log|S| grows as the terms cancel: sum|b e^a| / |S| is the condition.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        absum = np.atleast_1d(special.logsumexp(a, axis=axis, b=np.abs(b), keepdims=keepdims))
        cond = np.exp(absum - want_r)
    eps = float(np.finfo(np.result_type(a, b)).eps)
    well = np.isfinite(want_r) & (cond < 1e3)
    np.testing.assert_allclose(got_r[well], want_r[well], rtol=64 * eps * cond[well].max(initial=1), atol=64 * eps)
    np.testing.assert_array_equal(got_s[well], want_s[well])
    special_ = ~np.isfinite(want_r)
    np.testing.assert_array_equal(got_r[special_], want_r[special_])
    # Without return_sign, a negative sum is NaN, as SciPy.
    plain = np.atleast_1d(tps.logsumexp(a, axis=axis, b=b, keepdims=keepdims))
    assert np.array_equal(np.isnan(plain[well]), want_s[well] < 0)


def test_core_api_unchanged_for_float_arrays_with_int_axis():
    # twopass.softmax keeps its defaults (axis=-1); twopass.scipy's are SciPy's (None).
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(twopass.softmax(x), twopass.softmax(x, axis=-1))
    assert not np.allclose(tps.softmax(x), twopass.softmax(x))
