"""float16 and bfloat16 in the kernels: read and written as such, computed in float32.

Every op x {float16, bfloat16} x algorithm x ISA x axis layout x out=, NumPy arrays and
torch CPU tensors, against the float64 reference rounded to the dtype. Tolerance: 1 ulp
of the half dtype, as the distance between the two 16-bit patterns in the format's
order (the kernels round a float32 result accurate to a few float32 ulps once, so they
give the correctly rounded value or its neighbour); for log_softmax and logsumexp
results near 0 (cancellation) also float32's absolute bound; infinities and NaN exactly.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import twopass
import twopass.torch  # noqa: F401 - the torch entry points
from conftest import ISA_PARAMS, OPS, run
from twopass import reference

HALVES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
HALF_IDS = ("float16", "bfloat16")
ALGOS = ("two_pass", "three_pass_reload", "three_pass_recompute", "online")


def exact_reference(op: str, x: np.ndarray, axis: int = -1) -> np.ndarray:
    x64 = x.astype(np.float64)
    ref = reference.logsumexp(x64, axis=axis) if op == "logsumexp" else getattr(reference, op)(x64, axis=axis)
    return np.asarray(ref)


def rounded_reference(op: str, x: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(over="ignore"):  # float16 log_softmax below -65504 rounds to -inf
        return exact_reference(op, x, axis).astype(x.dtype)


def order(a: np.ndarray) -> np.ndarray:
    """The 16-bit patterns as integers in the order of the values they stand for."""
    b = np.ascontiguousarray(a).view(np.uint16).astype(np.int64)
    return np.where(b & 0x8000, -(b & 0x7FFF), b)


def assert_half_close(op: str, x: np.ndarray, y: np.ndarray, axis: int = -1) -> None:
    y = np.asarray(y)
    ref = rounded_reference(op, x, axis)
    assert y.dtype == x.dtype and y.shape == ref.shape
    y32, r32 = y.astype(np.float32), ref.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(y32), np.isnan(r32), err_msg=f"{op}: NaN pattern differs")
    inf = np.isinf(r32) | np.isinf(y32)
    np.testing.assert_array_equal(y32[inf], r32[inf], err_msg=f"{op}: infinities differ")
    fin = ~np.isnan(r32) & ~inf
    dist = np.abs(order(y) - order(ref))
    # log_softmax and logsumexp near 0 come from cancellation ((x - max) - log(sum)):
    # there float32's absolute error, 8 (|ref| + 1) 2^-24, may exceed an ulp of the
    # small result (conftest's BOUND_A for float32).
    exact = exact_reference(op, x, axis)
    with np.errstate(invalid="ignore"):
        err = np.abs(y.astype(np.float64) - exact)
    f32_bound = 8.0 * (np.abs(exact) + 1) * 2.0**-24 if op != "softmax" else 0.0
    bad = fin & (dist > 1) & ~(err <= f32_bound + np.abs(exact) * float(ml_dtypes.finfo(x.dtype).eps))
    assert not bad.any(), f"{op}: {int(bad.sum())} elements beyond 1 ulp (distances {dist[bad][:5]})"


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("with_out", [False, True])
@pytest.mark.parametrize("shape,axis", [((6, 67), -1), ((5, 37, 9), 1), ((70, 3), 0)])
def test_matches_rounded_reference(op, isa, algorithm, dtype, with_out, shape, axis):
    rng = np.random.default_rng(abs(hash((op, isa, algorithm, shape))) % 2**32)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    out = None
    if with_out:
        reduced = tuple(s for i, s in enumerate(x.shape) if i != axis % x.ndim)
        out = np.empty(x.shape if op != "logsumexp" else reduced, dtype)
    y = run(op, x, axis=axis, algorithm=algorithm, isa=isa, out=out, threads=1)
    if with_out:
        assert y is out
    assert_half_close(op, x, y, axis)


# Tails: each ISA's vector width (1, 8, 16 floats) and its unrolled step (x4), +-1.
TAIL_LENGTHS = (1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129)


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algorithm", ["two_pass", "three_pass_reload"])
def test_tails(op, isa, algorithm, dtype):
    rng = np.random.default_rng(7)
    for n in TAIL_LENGTHS:
        x = (rng.standard_normal((3, n)) * 4).astype(dtype)
        assert_half_close(op, x, run(op, x, algorithm=algorithm, isa=isa, threads=1))
        # Panels of a non-last axis with as many lanes (masked lanes in the panel loops).
        xt = (rng.standard_normal((5, n)) * 4).astype(dtype)
        assert_half_close(op, xt, run(op, xt, axis=0, algorithm=algorithm, isa=isa, threads=1), axis=0)


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_reload_scratch_row_and_beyond(op, isa, dtype):
    # The reload's row blocks keep exp(x - max) in a float32 row: the stack's up to 4096
    # elements, a per-thread row up to 2^20, and recompute it beyond: both sides of those
    # bounds, and a special row among them.
    rng = np.random.default_rng(11)
    wide = twopass._core.RELOAD_WIDE_ROW_ELEMENTS
    for n in (2047, 2048, 2049, 4096, 4097, 4099, wide, wide + 1):
        x = (rng.standard_normal((3, n)) * 4).astype(dtype)
        x[1, 5] = np.inf
        assert_half_close(op, x, run(op, x, algorithm="three_pass_reload", isa=isa, threads=1))


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("op", OPS)
def test_special_values(op, algorithm, isa, dtype):
    inf, nan = np.inf, np.nan
    big = 60000.0 if dtype == np.float16 else 3e38
    rows = [
        [nan, 1, 2, 3],  # NaN row: NaN (logsumexp NaN)
        [inf, 1, 2, 3],  # +inf: NaN (logsumexp +inf)
        [-inf, -inf, -inf, -inf],  # all -inf: NaN (logsumexp -inf)
        [-inf, 1, 2, -inf],  # -inf entries: 0 / -inf
        [big, big, -big, 0],  # huge values never overflow
        [nan, inf, -inf, 0],  # NaN wins over +inf
    ]
    x = np.array(rows, dtype=np.float64).astype(dtype)
    assert_half_close(op, x, run(op, x, algorithm=algorithm, isa=isa, threads=1))
    # The same rows down a non-last axis (panels): the redo per lane.
    assert_half_close(op, x.T.copy(), run(op, x.T.copy(), axis=0, algorithm=algorithm, isa=isa, threads=1), axis=0)


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("op", OPS)
def test_empty_axis(op, dtype):
    x = np.zeros((3, 0), dtype)
    y = run(op, x)
    assert y.dtype == dtype
    if op == "logsumexp":
        assert y.shape == (3,) and np.all(y.astype(np.float32) == -np.inf)
    else:
        assert y.shape == (3, 0)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", ALGOS)
def test_float16_log_softmax_overflow(isa, algorithm):
    # log_softmax(-65000 | 65000) = -130000: below -65504, float16 rounds it to -inf.
    x = np.array([[-65000.0, 65000.0, 0.0, 64000.0]], np.float16)
    y = run("log_softmax", x, algorithm=algorithm, isa=isa)
    assert y[0, 0] == -np.inf and y[0, 1] == 0
    assert_half_close("log_softmax", x, y)


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("op", OPS)
def test_strided_misaligned_and_in_place(op, isa, dtype):
    rng = np.random.default_rng(3)
    base = (rng.standard_normal((9, 131)) * 4).astype(dtype)
    for x, axis in [
        (base[:, 1:], -1),  # rows starting 2 bytes off any vector alignment
        (base[:, ::2], -1),  # a stride along the axis: copied first
        (base[1:, 3:100].T, 0),  # transposed: the axis is the outer one
        (base[::2, 1:], 0),  # panels with an outer stride, misaligned
    ]:
        assert_half_close(op, x, run(op, x, axis=axis, isa=isa, threads=1), axis)
    if op != "logsumexp":
        x = base[:, 1:].copy()
        want = run(op, x, isa=isa)
        assert run(op, x, out=x, isa=isa) is x
        np.testing.assert_array_equal(x.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("op", OPS)
def test_threads_and_long_rows(op):
    rng = np.random.default_rng(5)
    for dtype in HALVES:
        x = (rng.standard_normal((2, 300_001)) * 4).astype(dtype)  # split along the axis
        assert_half_close(op, x, run(op, x, threads=2, algorithm="two_pass"))
        x = (rng.standard_normal((64, 4099)) * 4).astype(dtype)  # rows spread over threads
        assert_half_close(op, x, run(op, x, threads=2))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_torch_tensors(op, name):
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, name)
    t = (torch.randn(7, 45, generator=torch.Generator().manual_seed(1)) * 4).to(tdt)
    x = t.view(torch.int16).numpy().view(HALVES[HALF_IDS.index(name)])
    fn = getattr(twopass, op)
    y = fn(t)  # the NumPy API on a CPU tensor: a tensor back
    assert isinstance(y, torch.Tensor) and y.dtype == tdt
    assert_half_close(op, x, y.view(torch.int16).numpy().view(x.dtype))
    tp_fn = getattr(twopass.torch, op)  # the torch entry points
    yt = tp_fn(t, dim=0)
    assert yt.dtype == tdt
    assert_half_close(op, x, yt.view(torch.int16).numpy().view(x.dtype), axis=0)
    if op != "logsumexp":  # out= a tensor: written in place through its uint16 view
        out = torch.empty_like(t)
        fn(t, out=out)
        assert torch.equal(out.view(torch.int16), y.view(torch.int16))


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(HALVES),
    op=st.sampled_from(OPS),
    algorithm=st.sampled_from(ALGOS),
    n=st.integers(1, 200),
    scale=st.sampled_from([0.1, 4.0, 40.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_within_one_ulp(dtype, op, algorithm, n, scale, seed):
    x = (np.random.default_rng(seed).standard_normal((2, n)) * scale).astype(dtype)
    y = run(op, x, algorithm=algorithm)
    assert_half_close(op, x, y)
    if op == "softmax":  # rows sum to 1 within the rounding of n terms to the dtype
        eps = float(ml_dtypes.finfo(dtype).eps)
        assert np.all(np.abs(y.astype(np.float64).sum(-1) - 1) <= n * eps / 2 + 1e-6)


# ----------------------------------------------------------------------------------
# AVX512-BF16: where the CPU has it, bfloat16 outputs on AVX-512 are narrowed by
# vcvtneps2bf16 (with the integer rounding for vectors holding a subnormal, which the
# instruction flushes). Both must give the same bits, for every kernel that writes
# bfloat16: the softmax family, the fused cross-entropy and the softmax backward.
# ----------------------------------------------------------------------------------
@pytest.mark.skipif(not twopass._core.avx512_bf16_supported(), reason="CPU or build lacks AVX512-BF16")
def test_avx512_bf16_instruction_gives_the_integer_rounding_bits():
    import torch

    import twopass.torch as tpt

    rng = np.random.default_rng(5)
    rows = [
        rng.standard_normal(3001) * 4,
        np.linspace(0.0, -110.0, 3001),  # outputs down through the subnormals to 0
        rng.uniform(-95, 0, 3001),
        np.where(np.arange(3001) % 3 == 0, -np.inf, rng.standard_normal(3001)),  # masked
        np.where(np.arange(3001) == 7, np.nan, 1.0),
        np.where(np.arange(3001) == 9, np.inf, 1.0),
        np.full(3001, -np.inf),
        np.full(3001, 3e38),
    ]
    x = np.stack(rows).astype(ml_dtypes.bfloat16)
    xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    target = torch.tensor(rng.integers(0, 3001, len(rows)))
    g = torch.randn(xt.shape, dtype=torch.float32).to(torch.bfloat16)

    def outputs():
        out = {}
        for op in OPS:
            for algorithm in twopass.ALGORITHMS:
                out[op, algorithm] = run(op, x, algorithm=algorithm, isa="avx512", threads=1).view(np.uint16)
        logits = xt[:3].clone().requires_grad_(True)  # finite rows: a gradient to compare
        tpt.cross_entropy(logits, target[:3]).backward()
        out["ce_grad"] = logits.grad.view(torch.int16).numpy().copy()
        for log in (False, True):
            y = (tpt.log_softmax if log else tpt.softmax)(xt[:4], -1)
            out["bwd", log] = torch.ops.twopass.softmax_backward(g[:4], y, -1, log).view(torch.int16).numpy().copy()
        return out

    was = twopass._core.avx512_bf16()
    try:
        twopass._core.set_avx512_bf16(False)
        integer = outputs()
        twopass._core.set_avx512_bf16(True)
        instruction = outputs()
    finally:
        twopass._core.set_avx512_bf16(was)
    subnormal = (integer["softmax", "two_pass"] & 0x7F80 == 0) & (integer["softmax", "two_pass"] & 0x7F != 0)
    assert subnormal.sum() > 100  # the case the instruction flushes is exercised
    for key in integer:
        np.testing.assert_array_equal(instruction[key], integer[key], err_msg=str(key))


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
def test_max_pass_on_integer_keys_special_rows(isa, dtype):
    """The maximum pass of float16 rows on 16-bit integer keys (csrc/kernels/simd/half_keys_x86.h;
    bfloat16 alongside, on its paired loads): rows whose maximum is negative, that mix -0
    and +0, hold only subnormals, have -inf everywhere but one element, span more than
    exp's normal range, or hold a NaN of either sign or +inf, the special element at the
    start, at a step boundary and in the tail, misaligned by one element: softmax and
    log_softmax within one ulp of the rounded float64 reference, NaN and infinities where
    it has them. (A maximum read wrong only costs time: a row whose sum comes out 0, inf
    or NaN is redone by the general driver, and the result does not depend on the shift
    otherwise. This pins the results, not the keys.)"""
    rng = np.random.default_rng(21)
    n = 5 * 64 + 7  # whole steps of every ISA, then a tail
    nan_pos, nan_neg = np.uint16(0x7E00), np.uint16(0xFE00)
    cases = (
        "negative",
        "signed_zeros",
        "subnormals",
        "one_finite",
        "wide_range",
        "tiny_negative",
        "nan+",
        "nan-",
        "inf",
    )
    for case in cases:
        for pos in (0, 63, 64, n - 1):
            x = np.empty(n + 1, dtype)[1:]  # misaligned
            if case == "negative":
                x[:] = -np.abs(rng.standard_normal(n) * 3) - 0.5
                x[pos] = -0.25  # the maximum, negative
            elif case == "signed_zeros":
                x[:] = np.where(rng.random(n) < 0.5, -0.0, 0.0)
            elif case == "subnormals":
                x[:] = -rng.uniform(1e-7, 5e-5, n)
            elif case == "one_finite":
                x[:] = -np.inf
                x[pos] = -3.0
            elif case == "wide_range":  # a minimum read too high would take the exp without its
                x[:] = rng.uniform(0, 10, n)  # underflow handling (x - max < -87)
                x[rng.random(n) < 0.3] = -100.0
                x[pos] = 10.5
            elif case == "tiny_negative":  # a maximum read too high underflows every exp
                x[:] = rng.uniform(0, 2, n)
                x[rng.random(n) < 0.3] = -1e-4
                x[pos] = 2.5
            else:
                x[:] = rng.standard_normal(n)
                if case == "inf":
                    x[pos] = np.inf
                else:
                    x.view(np.uint16)[pos] = nan_pos if case == "nan+" else nan_neg
            for op in ("softmax", "log_softmax"):
                for algorithm in ("three_pass_reload", "three_pass_recompute", "auto"):
                    y = run(op, x, algorithm=algorithm, isa=isa, threads=1)
                    assert_half_close(op, x, y)
