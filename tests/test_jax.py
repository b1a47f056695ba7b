"""twopass.jax: the kernels as XLA FFI calls, under jit, grad and vmap.

Values against the extended-precision reference (conftest's bounds; float16/bfloat16
within one more rounding to the half) and against jax.nn (special values exactly: NaN
where NaN, infinities equal); gradients against finite differences in float64
(jax.test_util.check_grads) and against jax.nn's; vmap over every axis against the
unbatched calls; cross_entropy against twopass.cross_entropy and an independent jnp
formula of docs/cross_entropy.md. Skipped without jax.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import twopass  # noqa: E402
import twopass.jax as tpj  # noqa: E402
from conftest import assert_close  # noqa: E402

OPS = ("softmax", "log_softmax", "logsumexp")
NN = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax, "logsumexp": jax.nn.logsumexp}
DTYPES = ("float32", "float64", "float16", "bfloat16")
ALGOS = ("auto", *twopass.ALGORITHMS)


@pytest.fixture(autouse=True)
def _x64(request):
    """float64 needs jax_enable_x64; scoped to the test (other tests see JAX's default)."""
    with jax.enable_x64(True):
        yield


def call(op: str, x, axis=-1, **kw):
    return getattr(tpj, op)(x, axis=axis, **kw)


def check_values(op, x: np.ndarray, y, axis=-1, keepdims=False):
    """y against the reference; halves within their own rounding (assert_close's out_dtype)."""
    y = np.asarray(y)
    assert y.dtype == x.dtype
    if x.dtype.itemsize == 2:
        assert_close(op, x.astype(np.float32), y.astype(np.float32), axis=axis, keepdims=keepdims, out_dtype=x.dtype)
    else:
        assert_close(op, x, y, axis=axis, keepdims=keepdims)


def random(shape, dtype, seed=0, scale=4.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(jnp.dtype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "shape,axis", [((7, 67), -1), ((3, 1000), 1), ((5, 37, 9), 1), ((70, 3), 0), ((1,), 0), ((2, 5, 4), -2)]
)
def test_matches_reference_and_jax_nn(op, dtype, shape, axis):
    x = random(shape, dtype, seed=len(shape) * 100 + shape[-1])
    y = jax.jit(lambda a: call(op, a, axis))(jnp.asarray(x))
    check_values(op, x, y, axis)
    ref = NN[op](jnp.asarray(x), axis=axis)
    tol = 1e-5 if dtype == "float32" else 1e-12 if dtype == "float64" else 2 * float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(ref, np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("op", ("softmax", "log_softmax"))
def test_every_algorithm(op, algorithm):
    for shape, axis in [((9, 300), -1), ((40, 5, 3), 0)]:
        x = random(shape, "float32", seed=3)
        check_values(op, x, call(op, jnp.asarray(x), axis, algorithm=algorithm, threads=2), axis)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [(0, 2), (1, 2), None, (0, 1, 2)])
def test_several_axes(op, axis):
    x = random((4, 6, 5), "float64", seed=5)
    y = np.asarray(call(op, jnp.asarray(x), axis))
    ref = np.asarray(NN[op](jnp.asarray(x), axis=axis))
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)
    assert y.shape == ref.shape


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2)])
def test_logsumexp_keepdims_and_default_axis(axis, keepdims):
    x = random((3, 4, 5), "float64", seed=6)
    y = tpj.logsumexp(jnp.asarray(x), axis=axis, keepdims=keepdims)
    ref = jax.nn.logsumexp(jnp.asarray(x), axis=axis, keepdims=keepdims)
    assert y.shape == ref.shape
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-13)
    assert tpj.logsumexp(jnp.asarray(x)).shape == ()  # jax.nn's default: every axis


SPECIAL_ROWS = [
    [1.0, -np.inf, 2.0],
    [-np.inf, -np.inf, -np.inf],
    [np.inf, 0.0, 1.0],
    [np.nan, 0.0, 1.0],
    [np.inf, np.inf, 0.0],
    [-np.inf, np.inf, 0.0],
    [np.inf, np.nan, -np.inf],
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_special_values_as_jax_nn(op, dtype):
    big = float(jnp.finfo(dtype).max) * 0.9
    rows = [*SPECIAL_ROWS, [big, big, 0.0], [big, -big, 0.0]]
    x = np.array(rows, dtype=np.float64).astype(jnp.dtype(dtype))
    for xx, axis in [(x, -1), (np.ascontiguousarray(x.T), 0)]:
        y = np.asarray(call(op, jnp.asarray(xx), axis), np.float64)
        ref = np.asarray(NN[op](jnp.asarray(xx), axis=axis), np.float64)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        inf = np.isinf(ref)
        np.testing.assert_array_equal(y[inf], ref[inf])
        fin = np.isfinite(ref)
        np.testing.assert_allclose(y[fin], ref[fin], rtol=4 * float(jnp.finfo(dtype).eps))


@pytest.mark.parametrize("op", OPS)
def test_lengths_0_and_1(op):
    for x in (jnp.zeros((3, 0)), jnp.zeros((0, 4)), jnp.array([[-np.inf], [np.nan], [2.5]]), jnp.float32(1.5)):
        axis = -1 if x.ndim else None
        y, ref = call(op, x, axis), NN[op](x, axis=axis)
        assert y.shape == ref.shape and y.dtype == ref.dtype
        np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))


def test_integer_input_and_errors():
    x = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
    y = tpj.softmax(x)
    assert y.dtype == jnp.result_type(float)
    np.testing.assert_allclose(np.asarray(y), np.asarray(jax.nn.softmax(x.astype(y.dtype))), rtol=1e-14)
    with pytest.raises(TypeError, match="complex"):
        tpj.softmax(jnp.ones(3, jnp.complex64))
    with pytest.raises(ValueError, match="out of bounds"):
        tpj.logsumexp(jnp.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="repeated"):
        tpj.softmax(jnp.ones((2, 3)), axis=(1, -1))
    with pytest.raises(ValueError, match="algorithm"):
        tpj.softmax(jnp.ones(3), algorithm="fast")


# ----------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [-1, 0, (0, 1)])
def test_grads_finite_differences(op, axis):
    x = jnp.asarray(random((3, 4, 5), "float64", seed=11, scale=1.0))
    check_grads(lambda a: call(op, a, axis), (x,), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)
    check_grads(jax.jit(lambda a: call(op, a, axis)), (x,), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [-1, 1])
def test_grads_match_jax_nn(op, dtype, axis):
    x = jnp.asarray(random((6, 33, 3), dtype, seed=12, scale=2.0))
    w = jnp.asarray(random(jax.eval_shape(lambda a: NN[op](a, axis=axis), x).shape, dtype, seed=13))

    def loss(f):
        return lambda a: jnp.sum((f(a, axis=axis) * w).astype(jnp.float32))

    g = jax.jit(jax.grad(loss(getattr(tpj, op))))(x)
    ref = jax.grad(loss(NN[op]))(x)
    assert g.dtype == x.dtype
    tol = {"float32": 2e-5, "float64": 1e-12}.get(dtype, 0.05)
    scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(ref, np.float64), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_half_grads_against_float64(op, dtype, axis):
    """The halves' backward (the fused kernels: rows over the last axis, panels over axis 0;
    logsumexp's over axis 0 in jnp) against float64 gradients at the same point: within a
    few ulps of the half at the largest."""
    x = jnp.asarray(random((8, 50), dtype, seed=14, scale=2.0))
    w = random(jax.eval_shape(lambda a: NN[op](a, axis=axis), x).shape, "float64", seed=15)
    g = jax.grad(lambda a: jnp.sum(call(op, a, axis).astype(jnp.float32) * w.astype(np.float32)))(x)
    ref = jax.grad(lambda a: jnp.sum(NN[op](a, axis=axis) * w))(x.astype(jnp.float64))
    assert g.dtype == x.dtype
    atol = 8 * float(jnp.finfo(dtype).eps) * float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(ref), rtol=0, atol=atol)


# ----------------------------------------------------------------------------------
# vmap
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("in_axis", [0, 1, 2])
@pytest.mark.parametrize("axis", [-1, 0])
def test_vmap_any_axis(op, in_axis, axis):
    x = jnp.asarray(random((4, 5, 6), "float32", seed=21))
    f = jax.jit(jax.vmap(lambda a: call(op, a, axis), in_axes=in_axis))
    y = np.asarray(f(x))
    slices = [np.asarray(call(op, jnp.take(x, i, axis=in_axis), axis)) for i in range(x.shape[in_axis])]
    np.testing.assert_allclose(y, np.stack(slices), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", OPS)
def test_vmap_of_grad(op):
    x = jnp.asarray(random((3, 4, 7), "float64", seed=22, scale=1.0))
    f = jax.vmap(jax.grad(lambda a: jnp.sum(call(op, a, -1) ** 2)), in_axes=1)
    ref = jax.vmap(jax.grad(lambda a: jnp.sum(NN[op](a, axis=-1) ** 2)), in_axes=1)
    np.testing.assert_allclose(np.asarray(f(x)), np.asarray(ref(x)), rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------------
# cross_entropy
# ----------------------------------------------------------------------------------
def ce_formula(x, t, w=None, ignore_index=-100, reduction="mean", eps=0.0):
    """docs/cross_entropy.md in jnp (float64), without z-loss and soft-cap."""
    c = x.shape[-1]
    w = jnp.ones(c, x.dtype) if w is None else w
    logp = jax.nn.log_softmax(x, axis=-1)
    valid = t != ignore_index
    ts = jnp.where(valid, t, 0)
    wt = w[ts] * valid
    ce = -(1 - eps) * wt * jnp.take_along_axis(logp, ts[:, None], axis=-1)[:, 0] - eps / c * jnp.sum(w * logp, -1)
    ce = jnp.where(valid, ce, 0.0)
    return {"none": ce, "sum": ce.sum(), "mean": ce.sum() / wt.sum()}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_formula_and_grad(reduction, eps, weighted):
    rng = np.random.default_rng(31)
    x = jnp.asarray(rng.standard_normal((9, 13)))
    t = jnp.asarray(rng.integers(0, 13, 9).astype(np.int32)).at[2].set(-100)
    w = jnp.asarray(rng.random(13) + 0.5) if weighted else None
    kw = dict(reduction=reduction, label_smoothing=eps)
    loss = jax.jit(lambda a: tpj.cross_entropy(a, t, w, **kw))(x)
    ref = ce_formula(x, t, w, reduction=reduction, eps=eps)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(ref), rtol=1e-13, atol=1e-15)
    check_grads(lambda a: tpj.cross_entropy(a, t, w, **kw), (x,), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)
    if reduction != "none":
        g = jax.grad(lambda a: tpj.cross_entropy(a, t, w, **kw))(x)
        gref = jax.grad(lambda a: ce_formula(a, t, w, reduction=reduction, eps=eps))(x)
        np.testing.assert_allclose(np.asarray(g), np.asarray(gref), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_numpy_twopass(dtype):
    """Every dtype, z-loss and soft-cap, int64 and int32 targets, (N, C, d) logits."""
    rng = np.random.default_rng(32)
    x = (rng.standard_normal((4, 11, 3)) * 3).astype(jnp.dtype(dtype))
    t = rng.integers(0, 11, (4, 3))
    t[1, 2] = -1
    kw = dict(ignore_index=-1, label_smoothing=0.05, z_loss=1e-3, softcap=5.0)
    for reduction in ("mean", "none"):
        for tt in (t.astype(np.int32), t.astype(np.int64)):
            y = tpj.cross_entropy(jnp.asarray(x), jnp.asarray(tt), reduction=reduction, **kw)
            ref, gref = twopass.cross_entropy(x, t, reduction=reduction, return_grad=True, **kw)
            assert y.dtype == x.dtype and y.shape == np.shape(ref)
            tol = 1e-6 if dtype == "float32" else 1e-14 if dtype == "float64" else float(jnp.finfo(dtype).eps)
            np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(ref, np.float64), rtol=tol, atol=tol)
        g = jax.grad(lambda a: tpj.cross_entropy(a, jnp.asarray(t), **kw).astype(jnp.float32))(jnp.asarray(x))
        ref, gref = twopass.cross_entropy(x, t, return_grad=True, **kw)
        assert g.dtype == x.dtype and g.shape == x.shape
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(gref, np.float64), rtol=tol, atol=tol)


def test_cross_entropy_shapes_vmap_and_errors():
    rng = np.random.default_rng(33)
    x = jnp.asarray(rng.standard_normal((5, 6, 10)).astype(np.float32))
    t = jnp.asarray(rng.integers(0, 10, (5, 6)).astype(np.int32))
    # vmap: each batch entry is its own problem, reduced on its own
    y = jax.jit(jax.vmap(tpj.cross_entropy))(x, t)
    ref = jnp.stack([tpj.cross_entropy(x[i], t[i]) for i in range(5)])
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-6)
    gy = jax.vmap(jax.grad(tpj.cross_entropy))(x, t)
    gref = jnp.stack([jax.grad(tpj.cross_entropy)(x[i], t[i]) for i in range(5)])
    np.testing.assert_allclose(np.asarray(gy), np.asarray(gref), rtol=1e-6, atol=1e-8)
    # (C,) logits with a 0-d target
    one = tpj.cross_entropy(x[0, 0], t[0, 0])
    assert one.shape == ()
    np.testing.assert_allclose(float(one), float(tpj.cross_entropy(x[0, :1], t[0, :1])), rtol=1e-7)
    # every row ignored: 0/0 = NaN, as torch
    assert np.isnan(float(tpj.cross_entropy(x[0], jnp.full(6, -100))))
    with pytest.raises(ValueError, match="target has shape"):
        tpj.cross_entropy(x[0], t[0, :3])
    with pytest.raises(TypeError, match="integer"):
        tpj.cross_entropy(x[0], t[0].astype(jnp.float32))
    with pytest.raises(ValueError, match="reduction"):
        tpj.cross_entropy(x[0], t[0], reduction="avg")
    with pytest.raises(Exception, match="outside"):  # found by the kernel when the computation runs
        jax.block_until_ready(tpj.cross_entropy(x[0], t[0].at[1].set(10)))


def test_no_compiler_error(monkeypatch):
    from twopass import _compile
    from twopass.jax import _build

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(_compile.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="twopass.jax compiles .* C\\+\\+ compiler"):
        _build.compiler()


def test_cached_library_is_keyed_by_jaxlib_and_sources():
    from twopass.jax import _build

    lib = _build.load()
    assert lib is _build.load()  # once per process
    path = _build.library_path()
    assert path.exists() and path.parent == _build.cache_dir()
    assert _build._jaxlib_version() in path.name and twopass.__version__ in path.name


def test_default_config_without_x64():
    """JAX's default (no x64): float32 everywhere, int32 targets."""
    with jax.enable_x64(False):
        x = jnp.asarray(random((5, 40), "float32", seed=41))
        t = jnp.arange(5) % 40
        assert t.dtype == jnp.int32
        y = jax.jit(tpj.softmax)(x)
        assert y.dtype == jnp.float32
        check_values("softmax", np.asarray(x), y)
        g = jax.jit(jax.grad(lambda a: tpj.cross_entropy(a, t, label_smoothing=0.1)))(x)
        with jax.enable_x64(True):
            x64 = jnp.asarray(np.asarray(x), jnp.float64)
            gref = jax.grad(lambda a: ce_formula(a, jnp.asarray(np.asarray(t)), eps=0.1))(x64)
        np.testing.assert_allclose(np.asarray(g), np.asarray(gref), rtol=1e-5, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    axis_seed=st.integers(0, 2),
    op=st.sampled_from(OPS),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_property_any_shape_and_axis(shape, axis_seed, op, dtype, seed):
    axis = axis_seed % len(shape) - len(shape) * (seed % 2)  # non-negative or negative
    x = random(tuple(shape), dtype, seed=seed, scale=8.0)
    with jax.enable_x64(True):
        y = call(op, jnp.asarray(x), axis)
    check_values(op, x, y, axis)
