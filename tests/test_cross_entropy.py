"""twopass.cross_entropy (NumPy) and twopass.torch.cross_entropy (autograd) against an
independent float64 reference: torch.nn.functional.cross_entropy on the (soft-capped)
logits, plus the z-loss formula, and its autograd gradient (docs/cross_entropy.md).

Bounds, in units of the compute dtype's unit roundoff u:
  per-row loss:  |loss - ref| <= 16 u (1 + |lse| + |x_t| + cap) * (weights' scale)
  gradient:      |g - ref|    <= 16 u (max over the row of |ref| + its scale) * (1 + cap)
(lse - x_t cancels, so the error is relative to the terms, not to the loss; a soft-cap
adds tanh's absolute error, a few u of the cap.) float16/bfloat16 add one rounding of
the output.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import twopass
from conftest import ISA_PARAMS, unit_roundoff

torch = pytest.importorskip("torch")
F = torch.nn.functional
import twopass.torch as tpt  # noqa: E402 - an import error in twopass fails, never skips

DTYPES = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)


# ----------------------------------------------------------------------------------
# The reference: torch in float64 on the same (rounded) inputs.
# ----------------------------------------------------------------------------------
def reference(x, t, *, weight=None, ignore_index=-100, reduction="mean", eps=0.0, zc=0.0, cap=None, upstream=None):
    """(loss, z_loss, lse, grad) in float64 numpy."""
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    xc = cap * torch.tanh(xt / cap) if cap else xt
    tt = torch.tensor(np.asarray(t, dtype=np.int64))
    w = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
    ce = F.cross_entropy(xc, tt, weight=w, ignore_index=ignore_index, reduction="none", label_smoothing=eps)
    lse = torch.logsumexp(xc, 1)
    valid = tt != ignore_index
    z = torch.where(valid, zc * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        loss, zr = ce + z, z
    elif reduction == "sum":
        loss, zr = ce.sum() + z.sum(), z.sum()
    else:
        cem = F.cross_entropy(xc, tt, weight=w, ignore_index=ignore_index, reduction="mean", label_smoothing=eps)
        zr = z.sum() / valid.sum()
        loss = cem + zr
    up = torch.ones_like(loss) if upstream is None else torch.tensor(np.asarray(upstream, dtype=np.float64))
    g = torch.autograd.grad(loss, xt, up, allow_unused=True)[0] if xt.numel() else torch.zeros_like(xt)
    return loss.detach().numpy(), zr.detach().numpy(), lse.detach().numpy(), g.numpy()


def check(x, t, got_loss, got_grad, *, weight=None, cap=None, out_dtype=None, upstream=None, **kw):
    """Compare with the reference within the bounds of the module docstring."""
    ref_loss, _, ref_lse, ref_grad = reference(x, t, weight=weight, cap=cap, upstream=upstream, **kw)
    cdt = np.float64 if np.asarray(x).dtype == np.float64 else np.float32
    u = unit_roundoff(cdt)
    if out_dtype is not None:
        u += float(ml_dtypes.finfo(out_dtype).eps) / 2 / 16
    x64 = np.asarray(x, dtype=np.float64)
    wscale = 1.0 if weight is None else float(np.max(np.abs(weight)))
    valid = np.asarray(t) != kw.get("ignore_index", -100)
    tt = np.where(valid, t, 0)
    xt = np.abs(x64[np.arange(len(t)), tt]) if x64.size else np.zeros(len(t))
    with np.errstate(invalid="ignore"):
        scale_row = (1 + np.abs(ref_lse) + np.where(np.isfinite(xt), xt, 0) + (cap or 0)) * wscale
    if kw.get("zc"):
        scale_row = scale_row * (1 + kw["zc"] * np.abs(ref_lse) ** 2)
    reduction = kw.get("reduction", "mean")
    if reduction == "none":
        loss_bound = 16 * u * scale_row
    else:
        loss_bound = 16 * u * (np.sum(np.where(valid, scale_row, 0)) + np.abs(ref_loss))
    _assert_within("loss", np.asarray(got_loss, dtype=np.float64), ref_loss, loss_bound)
    if got_grad is not None:
        g64 = np.asarray(got_grad, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            rowmax = np.max(np.where(np.isfinite(ref_grad), np.abs(ref_grad), 0), axis=1, keepdims=True, initial=0)
        # The target's p_t - 1 cancels: its terms are of the row's scale s * w_t (s = the
        # reduction's 1 / sum of target weights, times the upstream gradient).
        s = 1.0 / max(float(np.sum(np.where(valid, 1.0 if weight is None else np.asarray(weight)[tt], 0))), 1e-300)
        s = s if reduction == "mean" else 1.0
        up = np.abs(np.ones(len(t)) if upstream is None else np.broadcast_to(upstream, (len(t),)))
        terms = (s * wscale * up * (1 + 2 * kw.get("zc", 0) * np.abs(ref_lse)))[:, None]
        with np.errstate(invalid="ignore"):
            terms = np.where(np.isfinite(terms), terms, 0)
        bound = 16 * u * (rowmax + np.abs(ref_grad) + terms) * (1 + (cap or 0)) + 1e-300
        if kw.get("zc"):
            # The reference's own error: torch's logsumexp backward (the z-loss term) takes
            # exp(x - lse) with lse rounded to float64, off by up to |lse| u relative (a row
            # with lse 1087 and z_loss 1e-3: the reference 346 u off, twopass within 1 u of
            # mpmath).
            ref_u = unit_roundoff(np.float64)
            bound = bound + ref_u * np.where(np.isfinite(ref_lse), np.abs(ref_lse), 0)[:, None] * np.abs(ref_grad)
        _assert_within("grad", g64, ref_grad, bound)


def _assert_within(what, got, ref, bound):
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{what}: NaN pattern differs")
    inf = np.isinf(ref)
    np.testing.assert_array_equal(got[inf], ref[inf], err_msg=f"{what}: infinities differ")
    fin = np.isfinite(ref)
    with np.errstate(invalid="ignore"):  # (inf - inf where both are inf: checked above)
        err = np.abs(got - ref)
    bad = fin & ~(err <= bound)
    if bad.any():
        i = tuple(np.argwhere(bad)[0]) if bad.ndim else ()
        b = np.broadcast_to(bound, ref.shape)
        raise AssertionError(
            f"{what}: {bad.sum()} out of bound; at {i}: got {got[i]!r} ref {ref[i]!r} bound {b[i]:.3g}"
        )


def rand_case(rng, n, c, dtype, ignore=0.2):
    x = (rng.standard_normal((n, c)) * 4).astype(dtype)
    t = rng.integers(0, max(c, 1), n)
    t[rng.random(n) < ignore] = -100
    return x, t


# ----------------------------------------------------------------------------------
# NumPy API.
# ----------------------------------------------------------------------------------
OPTIONS = [
    {},
    {"weight": True},
    {"eps": 0.1},
    {"weight": True, "eps": 0.3},
    {"zc": 1e-3},
    {"cap": 5.0},
    {"weight": True, "eps": 0.1, "zc": 1e-2, "cap": 3.0},
]


def call(x, t, *, weight=None, eps=0.0, zc=0.0, cap=None, **kw):
    return twopass.cross_entropy(x, t, weight=weight, label_smoothing=eps, z_loss=zc, softcap=cap, **kw)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_torch(isa, opts, reduction, dtype):
    rng = np.random.default_rng(7)
    for n, c in [(9, 1), (5, 7), (13, 33), (6, 200), (3, 1031)]:  # SIMD tails, several blocks
        x, t = rand_case(rng, n, c, dtype)
        o = dict(opts)
        if o.pop("weight", False):
            o["weight"] = rng.uniform(0.1, 2.0, c).astype(dtype)
        loss, grad = call(x, t, reduction=reduction, return_grad=True, isa=isa, **o)
        assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == x.shape
        check(x, t, loss, grad, reduction=reduction, **o)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_half_precision(isa, dtype, reduction):
    rng = np.random.default_rng(3)
    x, t = rand_case(rng, 40, 301, dtype)
    w = rng.uniform(0.5, 1.5, 301).astype(np.float32)
    loss, grad = twopass.cross_entropy(
        x, t, weight=w, label_smoothing=0.05, reduction=reduction, return_grad=True, isa=isa
    )
    assert loss.dtype == dtype and grad.dtype == dtype
    check(x, t, loss, grad, weight=w, eps=0.05, reduction=reduction, out_dtype=dtype)


HALF_TAILS = (*range(1, 71), 1000, 4099)  # every SIMD tail of 8 and 16 lanes, unrolled by 4


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("opts", [{}, {"weight": True, "eps": 0.1, "zc": 1e-3, "cap": 4.0}], ids=["plain", "all"])
def test_half_tails_against_float64(isa, dtype, opts):
    """Half rows are read and their gradient written by the kernels (float32 inside):
    for every tail length, against float64 on the same half inputs, the gradient within
    one ulp of the half at the row's largest |gradient|, lse within float32's accuracy
    and the loss within one rounding to the half of it. Rows: a plain one, one with -inf
    entries, an ignored one, and (full options) the in-place gradient bit for bit."""
    rng = np.random.default_rng(12)
    eps_h = float(ml_dtypes.finfo(dtype).eps)
    u = unit_roundoff(np.float32)
    for c in HALF_TAILS:
        x = (rng.standard_normal((3, c)) * 4).astype(dtype)
        t = rng.integers(0, c, 3)
        if c > 2:
            x[1, (t[1] + 1) % c] = -np.inf
        t[2] = -100
        w = rng.uniform(0.5, 1.5, c).astype(np.float32) if opts.get("weight") else None
        o = {k: v for k, v in opts.items() if k != "weight"}
        loss, lse, grad = call(x, t, weight=w, reduction="none", return_lse=True, return_grad=True, isa=isa, **o)
        assert loss.dtype == grad.dtype == dtype and lse.dtype == np.float32
        ref_loss, _, ref_lse, ref_grad = reference(x, t, weight=w, reduction="none", **o)
        g = grad.astype(np.float64)
        rowmax = np.max(np.abs(ref_grad), axis=1, keepdims=True)
        err = np.abs(g - ref_grad)
        assert np.all(err <= eps_h * rowmax), (c, float(np.max(err / np.maximum(rowmax, 1e-300))))
        assert np.all(g[2] == 0)
        cap = o.get("cap") or 0
        np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=float(np.max(16 * u * (1 + np.abs(ref_lse) + cap))))
        xt = np.abs(x.astype(np.float64)[np.arange(3), np.where(t >= 0, t, 0)])
        lb = eps_h / 2 * np.abs(ref_loss) + 16 * u * (1 + np.abs(ref_lse) + xt)
        lb = lb * (1 + cap) * (1 + 2 * (o.get("zc") or 0) * np.abs(ref_lse) ** 2) * (1.5 if w is not None else 1)
        np.testing.assert_array_less(np.abs(loss.astype(np.float64) - ref_loss), lb + 1e-30)
        if opts:
            xi = x.copy()
            li = call(xi, t, weight=w, reduction="none", grad_out=xi, isa=isa, **o)[0]
            f32 = np.float32
            np.testing.assert_array_equal(li.astype(f32), loss.astype(f32))
            np.testing.assert_array_equal(xi.astype(f32), grad.astype(f32))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("strided", [False, True])
def test_half_blocks_and_in_place(monkeypatch, dtype, strided):
    """float16 and bfloat16 rows are widened in the kernel (strided classes go through
    float32 a block at a time); both also when the gradient replaces the logits."""
    from twopass import _cross_entropy

    monkeypatch.setattr(_cross_entropy, "_HALF_BLOCK_BYTES", 3 * 4 * 50)  # 3 rows a block
    rng = np.random.default_rng(5)
    x, t = rand_case(rng, 11, 100 if strided else 50, dtype)
    if strided:
        x, t = x[:, ::2], np.where(t >= 0, t % 50, t)
    x[3, 7] = np.nan  # a NaN row: NaN loss and gradient, in every path
    ref_loss, ref_grad = twopass.cross_entropy(x.astype(np.float32), t, reduction="none", return_grad=True)
    loss, grad = twopass.cross_entropy(x, t, reduction="none", return_grad=True)
    f32 = np.float32  # (NumPy's NaN-aware comparison does not know bfloat16)
    np.testing.assert_array_equal(loss.astype(f32), ref_loss.astype(dtype).astype(f32))
    np.testing.assert_array_equal(grad.astype(f32), ref_grad.astype(dtype).astype(f32))
    x[3, 7] = 0
    x0 = x.copy()
    ref = twopass.cross_entropy(x0, t, return_grad=True)
    loss = twopass.cross_entropy(x, t, grad_out=x)[0]
    assert loss == ref[0]
    np.testing.assert_array_equal(x, ref[1])


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_scratch_rows_between_calls(dtype):
    """Each thread keeps its scratch rows (the softmax, the soft-capped or widened row:
    csrc/cross_entropy.cpp, ScratchRow) from call to call, uninitialized, up to 1M
    classes, and takes its own beyond: calls of every length in turn, longer and shorter
    than the last, special rows among them, each as a fresh computation gives it (half
    rows: the float32 computation rounded to the half)."""
    rng = np.random.default_rng(8)
    for c, special in ((5000, False), ((1 << 20) + 3, False), (70, False), (5000, True), (1 << 20, True), (300, False)):
        x, t = rand_case(rng, 2, c, dtype, ignore=0)
        if special:  # a +inf logit: the generic driver's path (halves widened into a scratch row)
            x[1, (t[1] + 1) % c] = np.inf
        for cap in (None, 6.0):
            loss, grad = call(x, t, reduction="none", return_grad=True, cap=cap, threads=1)
            x32 = x.astype(np.float32)
            if dtype == np.float32:
                check(x32[:1], t[:1], loss[:1], grad[:1], reduction="none", cap=cap)
            else:
                l32, g32 = call(x32, t, reduction="none", return_grad=True, cap=cap, threads=1)
                f32 = np.float32
                np.testing.assert_array_equal(loss.astype(f32), l32.astype(dtype).astype(f32))
                np.testing.assert_array_equal(grad.astype(f32), g32.astype(dtype).astype(f32))
            if special and cap is None:  # (soft-capped, +inf is the cap)
                assert np.isnan(loss[1]) and np.isnan(grad[1].astype(np.float32)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extras_and_in_place(dtype):
    rng = np.random.default_rng(11)
    x, t = rand_case(rng, 17, 100, dtype)
    x0 = x.copy()
    loss, z, lse, grad = call(x, t, zc=1e-2, return_z_loss=True, return_lse=True, return_grad=True)
    ref_loss, ref_z, ref_lse, _ = reference(x0, t, zc=1e-2)
    u = unit_roundoff(dtype)
    np.testing.assert_allclose(lse, ref_lse, rtol=8 * u, atol=8 * u)
    np.testing.assert_allclose(z, ref_z, rtol=64 * u)
    assert lse.dtype == dtype
    # In place: the logits become the gradient, bit for bit the same as out of place.
    out = call(x, t, zc=1e-2, grad_out=x)
    assert out[0] == loss and out[1] is x
    np.testing.assert_array_equal(x, grad)
    np.testing.assert_array_equal(x0, x0)  # (x0 untouched: a copy)


def test_threads_are_bitwise_deterministic():
    rng = np.random.default_rng(2)
    x, t = rand_case(rng, 64, 4099, np.float32)
    a = twopass.cross_entropy(x, t, reduction="none", return_grad=True, threads=1)
    b = twopass.cross_entropy(x, t, reduction="none", return_grad=True, threads=2)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("algorithm", ["two_pass", "three_pass_reload", "three_pass_recompute", "online"])
def test_algorithms(algorithm):
    rng = np.random.default_rng(4)
    x, t = rand_case(rng, 8, 777, np.float32)
    loss, grad = twopass.cross_entropy(x, t, return_grad=True, algorithm=algorithm, label_smoothing=0.1)
    check(x, t, loss, grad, eps=0.1)


def test_strided_views():
    rng = np.random.default_rng(6)
    big = (rng.standard_normal((20, 90)) * 3).astype(np.float32)
    t = rng.integers(0, 45, 10)
    for x in (big[::2, :45], big[::2, ::2], big[::2, 1:46], big.T[:45, :10].T):
        loss, grad = twopass.cross_entropy(x, t, reduction="sum", return_grad=True)
        check(np.ascontiguousarray(x), t, loss, grad, reduction="sum")
        # a strided grad_out works too (through a temporary)
        gbuf = np.zeros((10, 90), np.float32)
        twopass.cross_entropy(x, t, reduction="sum", grad_out=gbuf[:, ::2])
        np.testing.assert_array_equal(gbuf[:, ::2], grad)


def test_one_row_and_empty():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    loss, grad = twopass.cross_entropy(x, np.int64(2), return_grad=True)
    assert loss.shape == () and grad.shape == (3,)
    check(x[None], [2], loss, grad[None])
    # no rows: mean is 0/0 = NaN (as torch), sum is 0
    e = np.zeros((0, 5), np.float32)
    assert np.isnan(twopass.cross_entropy(e, np.zeros(0, np.int64)))
    assert twopass.cross_entropy(e, np.zeros(0, np.int64), reduction="sum") == 0
    # every row ignored: NaN mean, zero gradient
    x, t = rand_case(np.random.default_rng(1), 4, 6, np.float32, ignore=1.0)
    loss, grad = twopass.cross_entropy(x, t, return_grad=True)
    assert np.isnan(loss) and not grad.any()


def test_special_values():
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [1.0, nan, 2.0, 0.5],  # NaN anywhere
            [1.0, inf, 2.0, 0.5],  # +inf
            [-inf, -inf, -inf, -inf],  # all -inf
            [-inf, 1.0, 2.0, 0.5],  # -inf at the target
            [1.0, -inf, 2.0, 0.5],  # -inf elsewhere
            [3e38, 3e38, -3e38, 1.0],  # huge: never overflows
            [-3e38, -3e38, -3e38, -3e38],  # huge negative, equal
            [1e-40, -1e-42, 0.0, -0.0],  # subnormal
        ],
        np.float32,
    )
    t = np.array([0, 0, 1, 0, 2, 1, 3, 2])
    for eps in (0.0, 0.2):
        loss, grad = twopass.cross_entropy(x, t, reduction="none", label_smoothing=eps, return_grad=True)
        ref_loss, _, _, ref_grad = reference(x, t, reduction="none", eps=eps)
        np.testing.assert_array_equal(np.isnan(loss), np.isnan(ref_loss))
        fin = np.isfinite(ref_loss)
        np.testing.assert_array_equal(loss[~fin & ~np.isnan(ref_loss)], ref_loss[~fin & ~np.isnan(ref_loss)])
        np.testing.assert_allclose(loss[fin], ref_loss[fin], rtol=1e-6, atol=1e-6)
        # gradients of rows torch gives finite gradients for
        ok = np.isfinite(ref_grad).all(axis=1)
        np.testing.assert_allclose(grad[ok], ref_grad[ok], rtol=1e-5, atol=1e-6)
        assert np.isnan(grad[:3]).all()  # NaN, +inf, all -inf: NaN rows, as torch
    # soft-capped: +-inf become +-cap, NaN stays NaN
    loss = twopass.cross_entropy(x, t, reduction="none", softcap=10.0)
    ref_loss = reference(x, t, reduction="none", cap=10.0)[0]
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(ref_loss))
    np.testing.assert_allclose(loss[~np.isnan(ref_loss)], ref_loss[~np.isnan(ref_loss)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("c", [1, 7, 64, 301])
@pytest.mark.parametrize("opts", [{}, {"weight": True, "eps": 0.1, "zc": 1e-3}], ids=["plain", "weighted"])
def test_loss_alone_in_blocks_of_rows(isa, dtype, c, opts):
    """The loss without the gradient computes its rows' lse in blocks of rows first
    (csrc/cross_entropy.cpp; halves widened a block at a time): special rows in several
    blocks keep torch's values, ignored rows 0, and the losses and lse agree with the
    reference and with the gradient's path (one row at a time)."""
    rng = np.random.default_rng(c)
    x, t = rand_case(rng, 700, c, np.float64)
    for r0 in (3, 300, 650):  # in three blocks of 256 rows
        x[r0, c // 2] = np.nan
        x[r0 + 1, 0] = np.inf
        x[r0 + 2] = -np.inf
        x[r0 + 3, :] = -np.inf  # one finite logit, at the target
        x[r0 + 3, t[r0 + 3] if t[r0 + 3] >= 0 else 0] = 1.5
    x = x.astype(dtype)
    o = dict(opts)
    if o.pop("weight", False):
        o["weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32 if np.dtype(dtype).itemsize == 2 else dtype)
    half = np.dtype(dtype).itemsize == 2
    xc = x.astype(np.float32) if half else x  # (the reference of a half row: its float32 values)
    for threads in (1, 2):
        loss, lse = call(x, t, reduction="none", return_lse=True, isa=isa, threads=threads, **o)
        loss_g, lse_g, _ = call(
            x, t, reduction="none", return_lse=True, return_grad=True, isa=isa, threads=threads, **o
        )
        check(xc, t, loss, None, reduction="none", out_dtype=dtype if half else None, **o)
        np.testing.assert_array_equal(np.isnan(loss.astype(np.float64)), np.isnan(loss_g.astype(np.float64)))
        eps = 8 * float(ml_dtypes.finfo(dtype).eps)
        ok = np.isfinite(loss.astype(np.float64))
        np.testing.assert_allclose(loss[ok].astype(np.float64), loss_g[ok].astype(np.float64), rtol=eps, atol=eps)
        np.testing.assert_allclose(lse.astype(np.float64), lse_g.astype(np.float64), rtol=eps, atol=eps)
        ref_lse = reference(xc, t, reduction="none", **o)[2]
        np.testing.assert_array_equal(np.isnan(lse.astype(np.float64)), np.isnan(ref_lse))


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_loss_alone_on_long_half_rows(isa, dtype):
    """Half rows longer than a block (16K elements) take the maximum and the sum of exps
    from the row itself (csrc/cross_entropy.cpp), special rows the widened path."""
    rng = np.random.default_rng(11)
    x, t = rand_case(rng, 5, 20011, np.float64, ignore=0.0)
    x[1, 7] = np.nan
    x[2, 3] = np.inf
    x[3] = -np.inf
    x[3, t[3]] = 0.5
    x = x.astype(dtype)
    for threads in (1, 2):
        loss, lse = call(x, t, reduction="none", return_lse=True, isa=isa, threads=threads)
        loss_g, lse_g, _ = call(x, t, reduction="none", return_lse=True, return_grad=True, isa=isa, threads=threads)
        check(x.astype(np.float32), t, loss, None, reduction="none", out_dtype=dtype)
        ok = np.isfinite(loss.astype(np.float64))
        np.testing.assert_array_equal(ok, np.isfinite(loss_g.astype(np.float64)))
        eps = 8 * float(ml_dtypes.finfo(dtype).eps)
        np.testing.assert_allclose(loss[ok].astype(np.float64), loss_g[ok].astype(np.float64), rtol=eps, atol=eps)
        np.testing.assert_allclose(lse[ok], lse_g[ok], rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    x = np.zeros((3, 4), np.float32)
    t = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="outside"):
        twopass.cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="outside"):
        twopass.cross_entropy(x, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="integer"):
        twopass.cross_entropy(x, t.astype(np.float32))
    with pytest.raises(TypeError, match="dtype"):
        twopass.cross_entropy(x.astype(np.int32), t)
    with pytest.raises(ValueError, match="shape"):
        twopass.cross_entropy(x, t[:2])
    with pytest.raises(ValueError, match="reduction"):
        twopass.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        twopass.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="softcap"):
        twopass.cross_entropy(x, t, softcap=0.0)
    with pytest.raises(ValueError, match="z_loss"):
        twopass.cross_entropy(x, t, z_loss=-1.0)
    with pytest.raises(ValueError, match="weight"):
        twopass.cross_entropy(x, t, weight=np.ones(3))
    with pytest.raises(ValueError, match="grad_out"):
        twopass.cross_entropy(x, t, grad_out=np.zeros((3, 4), np.float64))
    base = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        twopass.cross_entropy(base[:, :4], t, grad_out=base[:, 1:])
    with pytest.raises(ValueError, match="target has shape"):
        twopass.cross_entropy(np.zeros((2, 3, 4), np.float32), t)
    with pytest.raises(ValueError, match="class axis"):
        twopass.cross_entropy(np.float32(1.0), np.int64(0))
    with pytest.raises(ValueError, match="algorithm"):
        twopass.cross_entropy(x, t, algorithm="fast")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 9),
    c=st.integers(1, 70),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    eps=st.sampled_from([0.0, 0.05, 1.0]),
    zc=st.sampled_from([0.0, 1e-3]),
    cap=st.sampled_from([None, 2.0, 30.0]),
    weighted=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 3000.0]),
    seed=st.integers(0, 2**31),
)
def test_property(n, c, reduction, eps, zc, cap, weighted, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * scale).astype(dtype)
    t = rng.integers(-1, c, n)
    w = rng.uniform(0, 3, c).astype(dtype) if weighted else None
    loss, grad = twopass.cross_entropy(
        x,
        t,
        weight=w,
        ignore_index=-1,
        reduction=reduction,
        label_smoothing=eps,
        z_loss=zc,
        softcap=cap,
        return_grad=True,
    )
    check(x, t, loss, grad, weight=w, ignore_index=-1, reduction=reduction, eps=eps, zc=zc, cap=cap)


# ----------------------------------------------------------------------------------
# torch: autograd, dtypes, compile, the in-place option.
# ----------------------------------------------------------------------------------
def _torch_case(n=12, c=97, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, c, (n,), generator=g)
    t[::5] = -100
    return x.to(dtype), t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_autograd(dtype, reduction):
    x, t = _torch_case(dtype=dtype)
    w = torch.rand(x.shape[1], dtype=torch.float64) + 0.5
    opts = dict(weight=w.to(dtype), label_smoothing=0.1, z_loss=1e-3, softcap=20.0, reduction=reduction)
    xa = (x.clone() * 1).requires_grad_()
    loss = tpt.cross_entropy(xa, t, **opts)
    assert loss.dtype == dtype
    up = torch.rand(loss.shape, dtype=torch.float64) + 0.5 if reduction == "none" else torch.tensor(0.75)
    loss.backward(up.to(dtype))
    half = {torch.bfloat16: ml_dtypes.bfloat16, torch.float16: np.float16}.get(dtype)
    # the reference sees the rounded inputs; half precision is computed in float32
    xn = x.float().numpy() if half else x.numpy()
    check(
        xn,
        t.numpy(),
        loss.double().detach().numpy(),
        xa.grad.double().numpy(),
        weight=w.to(dtype).double().numpy(),
        eps=0.1,
        zc=1e-3,
        cap=20.0,
        reduction=reduction,
        upstream=up.to(dtype).double().numpy(),
        out_dtype=half,
    )


def test_torch_gradcheck():
    x, t = _torch_case(n=5, c=9, dtype=torch.float64)
    w = torch.rand(9, dtype=torch.float64) + 0.5
    opts = dict(weight=w, label_smoothing=0.2, z_loss=0.01, softcap=4.0)
    for red in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda a, red=red: tpt.cross_entropy(a, t, reduction=red, **opts), (x.clone().requires_grad_(),)
        )


def test_torch_extras_and_no_grad():
    x, t = _torch_case()
    loss, z, lse = tpt.cross_entropy(x, t, z_loss=1e-2, return_z_loss=True, return_lse=True)
    ref = reference(x.numpy(), t.numpy(), zc=1e-2)
    np.testing.assert_allclose(lse.numpy(), ref[2], rtol=1e-6)
    np.testing.assert_allclose(z.numpy(), ref[1], rtol=1e-5)
    assert not z.requires_grad and not lse.requires_grad
    with torch.no_grad():
        xa = x.clone().requires_grad_()
        assert torch.equal(tpt.cross_entropy(xa, t, z_loss=1e-2), loss)


def test_torch_in_place_backward():
    x, t = _torch_case(n=16, c=300)
    ref = x.clone().requires_grad_()
    F.cross_entropy(ref, t, label_smoothing=0.1).backward(torch.tensor(2.0))
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf, as a model's output
    storage = logits.data_ptr()
    loss = tpt.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=True)
    loss.backward(torch.tensor(2.0))
    torch.testing.assert_close(leaf.grad, ref.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits.detach(), leaf.grad)  # the logits' storage holds it
    assert logits.data_ptr() == storage
    # Safety: an op that saved the logits for its backward must not see the gradient.
    leaf2 = x.clone().requires_grad_()
    h = leaf2 * 1.0
    logits2 = torch.tanh(h)  # tanh saves its output (logits2) for backward
    loss2 = tpt.cross_entropy(logits2, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss2.backward()
    # The default leaves the logits untouched.
    logits3 = leaf.detach().clone().requires_grad_()
    before = logits3.detach().clone()
    tpt.cross_entropy(logits3, t).backward()
    assert torch.equal(logits3.detach(), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"reduction": "sum", "label_smoothing": 0.1},
        {"reduction": "none", "z_loss": 1e-3, "softcap": 15.0},
        {"weight": "w"},
    ],
)
def test_torch_in_place_eager_path_is_the_ops(dtype, kw, monkeypatch):
    """inplace_backward on plain contiguous CPU logits runs the kernel without the custom
    ops (_EagerInPlace): the same loss and gradient, bit for bit, as the ops' path (what
    the call takes when the eager path does not apply), the same upstream-gradient scaling."""
    x, t = _torch_case(n=9, c=133, dtype=dtype)
    if kw.get("weight") == "w":
        kw = {"weight": (torch.rand(x.shape[1], generator=torch.Generator().manual_seed(1)) + 0.5).to(dtype)}
    g = torch.rand(x.shape[0], dtype=dtype) + 0.5 if kw.get("reduction") == "none" else torch.tensor(1.5, dtype=dtype)
    results = []
    for path in ("_EagerInPlaceBackward", "_InPlaceBackward"):
        if path == "_InPlaceBackward":
            monkeypatch.setattr(tpt._cross_entropy, "_direct_ok", lambda *a: False)
        leaf = x.clone().requires_grad_()
        logits = leaf * 1.0  # a non-leaf, as a model's output
        loss = tpt.cross_entropy(logits, t, inplace_backward=True, **kw)
        node = loss.grad_fn
        if type(node).__name__ == "ViewBackward0":  # (reduction "none": the loss reshaped to the rows)
            node = node.next_functions[0][0]
        assert type(node).__name__ == path
        loss.backward(g)
        results.append((loss.detach(), leaf.grad))
    (la, ga), (lb, gb) = results
    assert torch.equal(la, lb)
    assert torch.equal(ga, gb)
    ref = x.double().clone().requires_grad_()
    fkw = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items() if k not in ("z_loss", "softcap")}
    if "softcap" not in kw and "z_loss" not in kw:  # (torch has neither)
        F.cross_entropy(ref, t, **fkw).backward(g.double())
        tol = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5
        torch.testing.assert_close(ga.double(), ref.grad, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("inplace", [False, True])
def test_torch_compile_fullgraph(backend, inplace):
    """No graph break (fullgraph), ignore_index rows, and the same loss and gradient as
    eager; the in-place variant too (its logits are an intermediate, as a model's are)."""
    x, t = _torch_case(n=8, c=50)

    def step(logits, target):
        logits = logits * 1.0 if inplace else logits
        return tpt.cross_entropy(
            logits, target, ignore_index=-100, label_smoothing=0.1, z_loss=1e-4, inplace_backward=inplace
        )

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    la, lb = step(a, t), compiled(b, t)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)


def test_torch_errors():
    x, t = _torch_case()
    with pytest.raises(ValueError, match="reduction"):
        tpt.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="target has shape"):
        tpt.cross_entropy(x[0], t)
    with pytest.raises(ValueError, match="outside"):
        tpt.cross_entropy(x, torch.full_like(t, 1000))


def test_accuracy_report():
    """`python -m twopass accuracy`'s cross-entropy rows: twopass within a few ulp of the
    extended-precision reference on large-vocabulary rows (as the README states)."""
    from twopass.accuracy import measure_cross_entropy

    rows = {r["impl"]: r for r in measure_cross_entropy()}
    mine = [r for k, r in rows.items() if k != "torch"]
    assert mine
    for r in mine:
        assert r["loss_ulp"] <= 4 and r["grad_u"] <= 4, r


# ----------------------------------------------------------------------------------
# torch.nn.functional.cross_entropy's signature and ranks, on every entry.
# ----------------------------------------------------------------------------------
def test_signature_is_torchs():
    """The NumPy, torch and distributed entries take F.cross_entropy's arguments in its
    order and with its names; everything else is keyword-only."""
    import inspect

    import twopass.torch.distributed as tpd

    ref = list(inspect.signature(F.cross_entropy).parameters.values())
    for fn in (twopass.cross_entropy, tpt.cross_entropy, tpd.cross_entropy):
        params = list(inspect.signature(fn).parameters.values())
        assert [(p.name, p.default) for p in params[: len(ref)]] == [(p.name, p.default) for p in ref], fn
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[: len(ref)])
        assert all(p.kind is p.KEYWORD_ONLY for p in params[len(ref) :]), fn


@pytest.mark.parametrize("shape", [(7,), (4, 7), (3, 7, 5), (2, 7, 3, 4)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ranks_match_torch(shape, reduction):
    """(C,), (N, C) and (N, C, d1, ..., dK) logits, class axis 1, as torch: loss, gradient
    and the shapes of both, on the NumPy and the torch entries, with weights and an
    ignored target."""
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = torch.randint(0, shape[-1] if len(shape) == 1 else shape[1], tshape, generator=g)
    if t.numel() > 1:
        t.view(-1)[0] = -100
    w = torch.rand(shape[0] if len(shape) == 1 else shape[1], generator=g, dtype=torch.float64) + 0.5
    a = x.clone().requires_grad_()
    ref = F.cross_entropy(a, t, w, reduction=reduction, label_smoothing=0.1)
    ref.backward(torch.ones_like(ref))
    b = x.clone().requires_grad_()
    mine = tpt.cross_entropy(b, t, w, reduction=reduction, label_smoothing=0.1)
    mine.backward(torch.ones_like(mine))
    assert mine.shape == ref.shape
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-12)
    loss, grad = twopass.cross_entropy(
        x.numpy(), t.numpy(), w.numpy(), reduction=reduction, label_smoothing=0.1, return_grad=True
    )
    assert loss.shape == tuple(ref.shape) and grad.shape == shape
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    if reduction != "none":  # the NumPy gradient is for an upstream gradient of 1
        np.testing.assert_allclose(grad, a.grad.numpy(), rtol=1e-12, atol=1e-12)
    # grad_out=, also in place over the logits, for every rank
    xs = x.numpy().copy()
    twopass.cross_entropy(xs, t.numpy(), w.numpy(), reduction=reduction, label_smoothing=0.1, grad_out=xs)
    np.testing.assert_array_equal(xs, grad)


def test_legacy_size_average_and_reduce():
    """torch's deprecated arguments decide the reduction as in torch (with a warning)."""
    x, t = _torch_case()
    for size_average, reduce in ((None, False), (False, None), (True, True), (False, True)):
        with pytest.warns(DeprecationWarning):
            mine = tpt.cross_entropy(x, t, None, size_average, -100, reduce)
        with pytest.warns(UserWarning):
            ref = F.cross_entropy(x, t, None, size_average, -100, reduce)
        torch.testing.assert_close(mine, ref)
        with pytest.warns(DeprecationWarning):
            np_loss = twopass.cross_entropy(x.numpy(), t.numpy(), None, size_average, -100, reduce)
        np.testing.assert_allclose(np_loss, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_torch_eager_gradient_becomes_grad_without_a_copy_and_retain_graph_is_safe():
    """The eager path's gradient is saved for backward (not held on ctx), so the leaf's
    .grad is that very buffer (no (N, C) copy); with retain_graph, the accumulation
    into it is caught by the saved tensor's version check instead of corrupting the
    second backward."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 500, generator=g, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, 500, (64,), generator=g)
    seen = []  # the address only: a reference held here would force the copy

    def new_grad(logits, real=tpt._cross_entropy._new_grad):
        grad, stream = real(logits)
        seen.append(grad.data_ptr())
        return grad, stream

    tpt._cross_entropy._new_grad, saved = new_grad, tpt._cross_entropy._new_grad
    try:
        tpt.cross_entropy(x, t).backward()
    finally:
        tpt._cross_entropy._new_grad = saved
    assert seen == [x.grad.data_ptr()]
    want = torch.autograd.grad(F.cross_entropy(x.double(), t), x)[0]
    torch.testing.assert_close(x.grad.double(), want.double(), rtol=1e-5, atol=1e-7)
    x.grad = None
    loss = tpt.cross_entropy(x, t)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    try:
        loss.backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
    else:
        torch.testing.assert_close(x.grad, 2 * first)
