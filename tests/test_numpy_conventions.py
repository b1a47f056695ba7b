"""NumPy's conventions at the public entries (`twopass._axes`): `axis` as an int, a tuple
or None; integer and boolean inputs in float64; lists and scalars; NumPy scalars for 0-d
results; and issue 11's invariant (log_softmax <= 0, exactly 0 at a dominant maximum;
logsumexp >= the maximum) on every ISA."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twopass
from conftest import ALL_ISAS, ISA_PARAMS, OPS, SUPPORTED, assert_close
from twopass import _axes
from twopass._softmax import compute


def rows_last(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """x with `axes` moved last and flattened into one (a copy): the reference's layout."""
    k = len(axes)
    m = np.moveaxis(x, axes, range(x.ndim - k, x.ndim))
    return m.reshape(m.shape[: x.ndim - k] + (-1,))


def check_axes(op: str, x: np.ndarray, axis, keepdims: bool = False) -> None:
    kw = {"keepdims": keepdims} if op == "logsumexp" else {}
    y = getattr(twopass, op)(x, axis=axis, **kw)
    axes = tuple(range(x.ndim)) if axis is None else tuple(a % x.ndim for a in np.atleast_1d(axis))
    if op == "logsumexp":
        expect = np.sum(np.zeros(x.shape), axis=axes, keepdims=keepdims).shape
        assert np.shape(y) == expect and y.dtype == x.dtype
        y = np.reshape(y, [x.shape[k] for k in range(x.ndim) if k not in axes])
    else:
        assert y.shape == x.shape and y.dtype == x.dtype
        y = rows_last(y, axes)
    assert_close(op, rows_last(x, axes), y)


# Layouts: C order, Fortran order, a reversed axis, a transposed view, a strided slice.
LAYOUTS = {
    "C": lambda a: a,
    "F": np.asfortranarray,
    "reversed": lambda a: a[:, ::-1],
    "transposed": lambda a: np.ascontiguousarray(a.transpose(2, 0, 1)).transpose(1, 2, 0),
    "sliced": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_axis_set_every_layout(op, dtype, layout):
    rng = np.random.default_rng(0)
    x = LAYOUTS[layout]((rng.standard_normal((3, 5, 17)) * 4).astype(dtype))
    sets = [None, ()] + [c for k in (1, 2, 3) for c in itertools.combinations(range(3), k)]
    for axis in sets + [(-1, 0), (2, -2)]:
        for keepdims in (False, True) if op == "logsumexp" else (False,):
            if axis == ():  # reducing nothing: each element is a row of one
                y = getattr(twopass, op)(x, axis=())
                expect = {"softmax": 1.0, "log_softmax": 0.0}.get(op)
                np.testing.assert_array_equal(y, x if expect is None else np.full_like(x, expect))
                continue
            check_axes(op, x, axis, keepdims)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
    op=st.sampled_from(OPS),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_axes_property(data, shape, op, dtype):
    x = data.draw(hnp.arrays(dtype, shape, elements=st.floats(-50, 50, width=np.dtype(dtype).itemsize * 8)))
    perm = data.draw(st.permutations(range(len(shape))))
    x = np.ascontiguousarray(x.transpose(perm)).transpose(np.argsort(perm))  # any memory order
    axes = data.draw(st.none() | st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True).map(tuple))
    if x.size == 0 and op != "logsumexp":
        y = getattr(twopass, op)(x, axis=axes)
        assert y.shape == x.shape
        return
    if x.size == 0:
        return  # an empty logsumexp is -inf: test_empty_and_scalars
    check_axes(op, x, axes, keepdims=data.draw(st.booleans()))


def test_merged_axes_are_views_where_memory_allows():
    a = np.zeros((4, 5, 6))
    for arr, axes in [
        (a, (1, 2)),  # trailing axes of C order: rows of 30
        (a, (0, 1)),  # leading axes of C order: one axis of stride 6, SIMD across the last
        (np.asfortranarray(a), (0, 1)),  # Fortran order: the leading axes are the rows
        (np.asfortranarray(a), (0, 1, 2)),
        (a[::2], (1, 2)),  # a strided outer axis
        (a.transpose(2, 0, 1), (1, 2)),  # merged in memory order, last in memory
    ]:
        v, ax, _ = _axes.merge_axes(arr, axes)
        assert np.shares_memory(v, arr) and v.shape[ax] == np.prod([arr.shape[k] for k in axes])
        assert _axes._kernel_ready(v, ax)
    v, ax, _ = _axes.merge_axes(a, (0, 2))  # not one stride: the documented copy
    assert not np.shares_memory(v, a) and v.shape == (5, 24) and ax == 1
    v, ax, _ = _axes.merge_axes(a[:, ::-1], (1, 2))  # a reversed axis among them: a copy
    assert not np.shares_memory(v, a) and v.shape == (4, 30) and ax == 1


def test_axis_errors():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="duplicate"):
        twopass.softmax(x, axis=(0, -2))
    with pytest.raises(np.exceptions.AxisError):
        twopass.logsumexp(x, axis=(0, 2))
    with pytest.raises(TypeError, match="axis"):
        twopass.log_softmax(x, axis=(0, 1.0))
    with pytest.raises(TypeError, match="axis"):
        twopass.softmax(x, axis=1.0)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.bool_])
def test_integers_and_booleans_in_float64(op, dtype):
    x = np.array([[0, 1, 1], [1, 0, 0]], dtype)
    y = getattr(twopass, op)(x, axis=None)
    want = getattr(twopass, op)(x.astype(np.float64), axis=None)
    assert np.asarray(y).dtype == np.float64
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [">f4", ">f8", "<f4", "<f8"])
def test_byte_swapped_floats(op, dtype):
    """Floats in the other byte order are read as numbers (a native copy), as SciPy does,
    with one axis and several."""
    x = np.random.default_rng(4).standard_normal((3, 37)).astype(dtype)
    native = x.astype(np.dtype(dtype).newbyteorder("="))
    for axis in (-1, (0, 1)):
        y = getattr(twopass, op)(x, axis=axis)
        np.testing.assert_array_equal(y, getattr(twopass, op)(native, axis=axis))
    t = np.array([0, 36, 5])
    np.testing.assert_array_equal(twopass.cross_entropy(x, t), twopass.cross_entropy(native, t))


def test_cross_entropy_ignore_index_must_be_an_integer():
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        twopass.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 1]), ignore_index=1.5)


@pytest.mark.parametrize("op", OPS)
def test_float32_and_halves_keep_their_dtype(op):
    import ml_dtypes

    for dt in (np.float32, np.float16, ml_dtypes.bfloat16):
        y = getattr(twopass, op)(np.zeros((2, 3), dt), axis=(0, 1))
        assert np.asarray(y).dtype == dt


def test_lists_scalars_and_numpy_scalars():
    np.testing.assert_array_equal(twopass.softmax([1, 2, 3]), twopass.softmax(np.array([1.0, 2.0, 3.0])))
    r = twopass.logsumexp([1000, 1000])
    assert type(r) is np.float64 and r == 1000 + np.log(2)
    # 0-d results from NumPy input (no out=) are NumPy scalars, as NumPy's reductions.
    x = np.array([1.0, 2.0], np.float32)
    for axis in (-1, 0, None, (0,)):
        assert type(twopass.logsumexp(x, axis=axis)) is np.float32
    assert type(twopass.logsumexp(np.ones((2, 3)), axis=None)) is np.float64
    assert twopass.logsumexp(x, keepdims=True).shape == (1,)
    assert twopass.logsumexp(np.ones((2, 3)), axis=None, keepdims=True).shape == (1, 1)
    assert type(twopass.softmax(3)) is np.float64 and twopass.softmax(3) == 1.0
    assert type(twopass.log_softmax(2.5)) is np.float64 and twopass.log_softmax(2.5) == 0.0
    assert type(twopass.logsumexp(np.float32(2.0))) is np.float32
    out = np.empty((), np.float32)
    assert twopass.logsumexp(x, out=out) is out  # with out=, out itself


def test_out_with_several_axes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    out = np.empty_like(x)
    assert twopass.softmax(x, axis=(0, 2), out=out) is out
    np.testing.assert_array_equal(out, twopass.softmax(x, axis=(0, 2)))
    lse = np.empty((4,))
    assert twopass.logsumexp(x, axis=(0, 2), out=lse) is lse
    np.testing.assert_array_equal(lse, twopass.logsumexp(x, axis=(0, 2)))
    want = twopass.log_softmax(x, axis=(0, 1))
    assert twopass.log_softmax(x, axis=(0, 1), out=x) is x  # in place
    np.testing.assert_array_equal(x, want)
    with pytest.raises(ValueError, match="shape"):
        twopass.logsumexp(x, axis=(0, 2), out=np.empty((3,)))
    with pytest.raises(ValueError, match="dtype"):
        twopass.softmax(x, axis=None, out=np.empty(x.shape, np.float32))


def test_empty_and_scalars():
    assert twopass.logsumexp(np.zeros((0, 3)), axis=None) == -np.inf
    np.testing.assert_array_equal(twopass.logsumexp(np.zeros((2, 0, 3)), axis=(1, 2)), [-np.inf, -np.inf])
    assert twopass.softmax(np.zeros((0, 3)), axis=None).shape == (0, 3)


def test_torch_tensors_with_tuple_axes():
    torch = pytest.importorskip("torch")
    t = torch.randn(3, 4, 5, dtype=torch.float64)
    y = twopass.softmax(t, axis=(1, 2))
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, torch.softmax(t.reshape(3, 20), -1).reshape(3, 4, 5))
    r = twopass.logsumexp(t, axis=None)
    assert isinstance(r, torch.Tensor) and r.shape == ()  # a 0-d tensor: scalars are NumPy's
    torch.testing.assert_close(r, torch.logsumexp(t.reshape(-1), 0))
    import twopass.torch as tpt  # dim= stays an int there

    torch.testing.assert_close(tpt.logsumexp(t, dim=1), torch.logsumexp(t, 1))


# ----------------------------------------------------------------------------------
# Issue 11's invariant, on every ISA and algorithm: log_softmax <= 0, == 0 at a maximum
# that dominates its row (the others exp-underflow against it); logsumexp >= max.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_exact_zero_at_dominant_max(isa, dtype):
    gap = {np.float32: 120.0, np.float64: 800.0}[dtype]  # exp(-gap) < u^2: adds nothing
    for algo in twopass.ALGORITHMS:
        for n in (1, 2, 3, 7, 16, 17, 33, 100):
            for head in (0.0, 5.0, -3.0, 1e4):
                x = np.full((3, n), head - gap, dtype)
                x[:, n // 2] = head
                x[1, 0] = -np.inf if n > 1 and n // 2 != 0 else x[1, 0]
                for axis, xx in ((-1, x), (0, np.ascontiguousarray(x.T))):
                    y = compute("log_softmax", xx, axis=axis, isa=isa, algorithm=algo)
                    top = np.take(y, n // 2, axis=1 if axis == -1 else 0)
                    assert np.all(top == 0), (algo, n, head, top)
                    assert np.all(y <= 0)
                    lse = compute("logsumexp", xx, axis=axis, isa=isa, algorithm=algo)
                    np.testing.assert_array_equal(lse, np.full(3, head, dtype))
    np.testing.assert_array_equal(twopass.log_softmax(np.array([0.0, -np.inf], dtype)), [0.0, -np.inf])


@settings(max_examples=80, deadline=None)
@given(
    x=hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.floats(-1e4, 1e4, width=32) | st.just(-np.inf),
    ),
    isa=st.sampled_from([i for i in ALL_ISAS if i in SUPPORTED]),
)
def test_invariant_property(x, isa):
    with np.errstate(invalid="ignore"):
        y = compute("log_softmax", x, isa=isa)
        lse = compute("logsumexp", x, isa=isa)
    m = x.max(axis=-1)
    live = m > -np.inf  # rows of only -inf give NaN
    assert np.all(y[live] <= 0)
    assert np.all(lse[live] >= m[live])
