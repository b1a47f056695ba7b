"""The kernels against the float64 reference: every ISA, algorithm, op and dtype, with
lengths chosen to hit each SIMD tail, the two-pass accurate-domain boundaries, and the
thread splits. (AddressSanitizer runs this file too: README, "Testing".)"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import twopass
from conftest import ISA_PARAMS, OPS, assert_close, run

DTYPES = (np.float32, np.float64)
# Tails by construction: every length up to two AVX-512 float32 vectors + 1 (33), the
# unrolled tile (4 vectors: 16 to 64 elements) and around it, and around the fold blocks
# (16 tiles: 256 to 1024 elements; 64 tiles for the max and online passes).
TAIL_LENGTHS = list(range(0, 34)) + [63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513]
TAIL_LENGTHS += [1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097]


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", twopass.ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_tail_lengths(isa, algorithm, dtype, op):
    rng = np.random.default_rng(len(TAIL_LENGTHS))
    for n in TAIL_LENGTHS:
        x = (rng.standard_normal((3, n)) * 4).astype(dtype)
        y = run(op, x, algorithm=algorithm, isa=isa, threads=1)
        assert_close(op, x, y)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", twopass.ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("inner", [1, 3, 16, 17, 40, 65, 130])
def test_non_last_axis(isa, algorithm, dtype, op, inner):
    # inner > 1: panels vectorised across `inner`; widths around every panel size.
    rng = np.random.default_rng(inner)
    x = (rng.standard_normal((2, 37, inner)) * 4).astype(dtype)
    y = run(op, x, axis=1, algorithm=algorithm, isa=isa, threads=1)
    assert_close(op, x, y, axis=1)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", twopass.ALGORITHMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("n", [1, 4, 37, 64, 65, 300])
def test_panels_with_special_lanes(isa, algorithm, dtype, op, n):
    """Columns with NaN, +inf, all -inf and values near the float32 maximum, in the
    first, middle and last lanes of a panel and past it: the per-lane check of the
    max-first algorithms (SoftmaxKernels::check_lanes, vectorized) flags exactly those,
    and the other lanes keep their values (short axes, where that check is most of the
    work; the softmax goes through a scratch panel on the stack up to 16 KiB and in a
    thread's own beyond, Algorithms::scratch_panel). In place gives the same bits."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, 130)) * 4).astype(np.float64)
    x[n // 2, 0] = np.nan
    x[0, 17] = np.inf
    x[:, 63] = -np.inf
    x[:, 64] = -np.inf
    x[n - 1, 64] = 2.5
    x[:, 100] = {np.float64: 1e300, np.float16: 6e4}.get(dtype, 3e38)
    x[n // 2, 129] = np.inf
    x[0, 129] = -np.inf
    x = x.astype(dtype)
    y = run(op, x, axis=0, algorithm=algorithm, isa=isa, threads=1)
    assert_close(op, x, y, axis=0)
    if op != "logsumexp":
        z = x.copy()
        run(op, z, axis=0, algorithm=algorithm, isa=isa, threads=1, out=z)
        np.testing.assert_array_equal(z.view(np.uint8), y.view(np.uint8))


# Rows that stress the range reduction and the two-pass accurate domain (|x| <= 4096
# in float32, 2^19 in float64): around the bound, far outside it, huge spreads, masks.
HARD_ROWS = {
    "large_near_bound": lambda n: 4000 + np.linspace(0, 90, n),
    "beyond_bound": lambda n: 5000 + np.linspace(-50, 50, n),
    "very_large": lambda n: 1e30 + np.zeros(n),
    "near_max_float": lambda n: np.full(n, 3e38),
    "very_negative": lambda n: -1e30 + np.linspace(0, 1e24, n),
    "negative_near_bound": lambda n: -3950 + np.linspace(-300, 0, n),
    "mask_minus_1e4": lambda n: np.where(np.arange(n) % 3 == 0, 1.0, -1e4),
    "mask_finfo_min": lambda n: np.where(np.arange(n) % 2 == 0, np.linspace(-5, 5, n), -3.4e38),
    "wide_spread": lambda n: np.linspace(-200, 200, n),
    "tiny": lambda n: np.full(n, 1e-40) * np.arange(n),
    "subnormal_outputs": lambda n: np.where(np.arange(n) == 0, 0.0, -95.0 - np.arange(n) % 20),
}


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", twopass.ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", sorted(HARD_ROWS))
def test_hard_rows(isa, algorithm, dtype, op, case):
    for n in (1, 2, 17, 100, 3000):
        with np.errstate(over="ignore"):
            x = HARD_ROWS[case](n).astype(dtype)
        x = np.stack([x, x[::-1].copy()])
        y = run(op, x, algorithm=algorithm, isa=isa, threads=1)
        assert_close(op, x, y)
        # Same rows as a non-last axis (the panel path has its own fix-ups).
        y2 = run(op, np.ascontiguousarray(x.T), axis=0, algorithm=algorithm, isa=isa, threads=1)
        assert_close(op, x.T, y2, axis=0)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_blocks_normal_range_boundary(isa, dtype):
    """rows_reload takes an exp without clamp or subnormal care when every x - max lies
    above Numerics::kNormalMin (-87 for float32, -708 for float64): rows whose range
    sits just inside and just outside it, with outputs near the smallest normal and in
    the subnormal range, must come out right on both sides."""
    span = 87.0 if dtype == np.float32 else 708.0
    rng = np.random.default_rng(3)
    rows = []
    for lo in (span - 0.5, span - 0.01, span + 0.01, span + 0.3, span + 0.7, span + 14, span + 30):
        row = rng.uniform(-lo, 0, 100)
        row[:2] = (0.0, -lo)  # the range is exactly lo
        rows.append(row)
    x = np.array(rows).astype(dtype) + dtype(5)
    for op in ("softmax", "log_softmax"):
        assert_close(op, x, run(op, x, algorithm="three_pass_reload", isa=isa, threads=1))


# x - max where exp's result is normal, subnormal, or rounds to 0 (Numerics::kNormalMin
# and kExpMin in csrc/kernel_api.h): -87 / -104 for float32, -708 / -746 for float64.
BELOW_NORMAL = {
    np.float32: ([-86.9, -20.0, -1.5], [-87.5, -95.0, -103.5], [-104.0, -104.5, -200.0, -1e4, -3e38, -np.inf]),
    np.float64: ([-707.9, -300.0, -1.5], [-708.5, -720.0, -745.0], [-746.0, -746.5, -2000.0, -1e6, -1e308, -np.inf]),
}


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", twopass.ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_exp_below_the_normal_range(isa, algorithm, dtype, op):
    """exp.h's nonpositive sets lanes whose exp rounds to 0 (masked logits: -inf, -1e4,
    the float's lowest) to 0 by a mask, and only a vector with a subnormal result takes
    the exact scaling: vectors that mix normal, subnormal and zero results in every
    arrangement, as rows and as panels, must give the reference's values, subnormals
    included (within 2 of their ulps), and exact zeros where it rounds to 0."""
    normal, subnormal, zero = BELOW_NORMAL[dtype]
    rng = np.random.default_rng(11)
    rows = []
    for kinds in ((normal, zero), (normal, subnormal), (subnormal, zero), (normal, subnormal, zero), (zero,)):
        pool = np.concatenate(kinds)
        for _ in range(3):
            row = rng.choice(pool, 130)
            row[rng.integers(0, 130)] = 0.0  # the maximum
            rows.append(row)
    x = np.array(rows).astype(dtype) + dtype(3)
    y = run(op, x, algorithm=algorithm, isa=isa, threads=1)
    assert_close(op, x, y)
    if op == "softmax":
        with np.errstate(under="ignore"):
            rounds_to_0 = np.isin(x - dtype(3), np.array(zero, dtype))
        assert (y[rounds_to_0] == 0).all()
    xt = np.ascontiguousarray(x.T)
    assert_close(op, xt, run(op, xt, axis=0, algorithm=algorithm, isa=isa, threads=1), axis=0)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("n", [1, 7, 33, 64, 100, 128, 129, 2049])
@pytest.mark.parametrize("algorithm", ["three_pass_reload", "two_pass"])
def test_row_blocks_with_special_rows(isa, dtype, op, n, algorithm):
    """Contiguous rows by three_pass_reload run 256 rows per kernel call
    (rows_reload; rows of up to 8 vectors, two at a time in registers: 128 float32 on
    AVX-512, whole unrolled steps or not, so n covers one to eight vectors and the first
    row past them), by two_pass one row at a time. Rows with special values, or outside
    two_pass's accurate domain, are flagged there and redone by the general path.
    Special rows at a block's first and last row, side by side, and in the last,
    partial block; 1 and 2 threads (the blocks start where a thread's rows do);
    misaligned outputs, streaming stores on and off."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((700, n)) * 4).astype(dtype)
    with np.errstate(over="ignore"):
        x[0, n // 2] = np.nan
        x[255, -1] = np.inf
        x[256] = -np.inf
        x[257, 0] = np.nan
        x[300] = dtype(3e38) if n > 1 else -np.inf  # huge but finite: the maximum-shifted sum is fine
        x[301, ::2] = -np.inf  # -inf entries in a finite row: softmax 0, log_softmax -inf
        x[699] = -np.inf
        x[400] = 5000 + np.linspace(0, 50, n)  # beyond the accurate domain: shifted redo
        x[402] = x[403] = x[400]
    for threads in (1, 2):
        y = run(op, x, algorithm=algorithm, isa=isa, threads=threads)
        assert_close(op, x, y)
    # misaligned outputs, streaming stores on and off
    buf = np.empty(x.size + 1, dtype)
    for stream in (False, True):
        y = buf[1:].reshape(x.shape)
        run(op, x, out=y, algorithm=algorithm, isa=isa, stream=stream, threads=1)
        assert_close(op, x, y)
        if n % 16 == 0:  # rows that keep the buffer's alignment: where it is a vector's, the stores stream
            y = buf[: x.size].reshape(x.shape)
            run(op, x, out=y, algorithm=algorithm, isa=isa, stream=stream, threads=1)
            assert_close(op, x, y)


# Rows longer than rows_reload's 16 KiB scratch row (float32 4096, float64 2048
# elements): softmax's reload fuses its max pass into its exp pass block by block (1024
# float32 / 512 float64 elements on AVX-512), each block's exp relative to the running
# maximum, rescaled by its own factor in pass 3. Rows whose maximum moves between
# blocks, special values in the first, a middle and the last block, -inf blocks before
# the first finite one, and factors that underflow. On 2 threads the row of 70,001 is
# split in two chunks (reload_split), each fused with its own running maximum and the
# chunks' sums merged: chunks of -inf only, or far below the other's maximum.
FUSED_ROWS = {
    "random": lambda n, rng: rng.standard_normal(n) * 4,
    "ascending": lambda n, rng: np.sort(rng.standard_normal(n) * 4),
    "descending": lambda n, rng: np.sort(rng.standard_normal(n) * 4)[::-1],
    "max_in_last_block": lambda n, rng: np.where(np.arange(n) == n - 3, 150.0, rng.standard_normal(n)),
    "steps_of_60": lambda n, rng: 60.0 * (np.arange(n) // 700) + rng.standard_normal(n),
    "leading_minus_inf": lambda n, rng: np.where(np.arange(n) < 2500, -np.inf, rng.standard_normal(n)),
    "minus_inf_blocks_then_nan": lambda n, rng: np.where(
        np.arange(n) < 2500, -np.inf, np.where(np.arange(n) == 2600, np.nan, 1.0)
    ),
    "nan_in_first_block": lambda n, rng: np.where(
        np.arange(n) == 5, np.nan, np.where(np.arange(n) < 100, -np.inf, 0.5)
    ),
    "nan_in_last_block": lambda n, rng: np.where(np.arange(n) == n - 1, np.nan, rng.standard_normal(n)),
    "inf_in_middle": lambda n, rng: np.where(np.arange(n) == n // 2, np.inf, rng.standard_normal(n)),
    "all_minus_inf": lambda n, rng: np.full(n, -np.inf),
    "huge_in_middle": lambda n, rng: np.where(np.arange(n) == n // 2, 3e38, rng.standard_normal(n)),
    "subnormal_outputs": lambda n, rng: np.linspace(-110.0, 0.0, n)[::-1],
    "first_chunk_minus_inf": lambda n, rng: np.where(np.arange(n) < 0.6 * n, -np.inf, rng.standard_normal(n)),
    "second_chunk_far_below": lambda n, rng: np.where(np.arange(n) < 0.5 * n, 120.0, 0.0) + rng.standard_normal(n),
    "second_chunk_nan": lambda n, rng: np.where(np.arange(n) == n - 1000, np.nan, rng.standard_normal(n)),
}


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(FUSED_ROWS))
def test_reload_fused_long_rows(isa, dtype, case):
    rng = np.random.default_rng(len(case))
    for n in (4097, 10_007, 70_001):
        with np.errstate(over="ignore", invalid="ignore"):
            x = FUSED_ROWS[case](n, rng).astype(dtype)
        xb = np.stack(
            [x, x[::-1].copy(), rng.standard_normal(n).astype(dtype)]
        )  # a batch: row blocks, next-row prefetch
        for threads in (1, 2):
            assert_close("softmax", x, run("softmax", x, algorithm="three_pass_reload", isa=isa, threads=threads))
            assert_close("softmax", xb, run("softmax", xb, algorithm="three_pass_reload", isa=isa, threads=threads))
        # misaligned output, streaming stores on and off (pass 3 rewrites y in place)
        buf = np.empty(n + 1, dtype)
        for stream in (False, True):
            run("softmax", x, out=buf[1:], algorithm="three_pass_reload", isa=isa, stream=stream, threads=1)
            assert_close("softmax", x, buf[1:])


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@pytest.mark.parametrize("case", sorted(FUSED_ROWS))
def test_reload_fused_long_rows_halves(isa, dtype, case):
    """float16/bfloat16 rows beyond the scratch row keep the fused pass's exp in a float32
    row of the thread's (rows_reload's wide row): float32's reload values, rounded once,
    bit for bit (bfloat16 with normal stores: within one ulp of them, its sum taken over
    the even and odd elements of each pair of vectors rather than in order); rows growing
    from call to call, a batch over 2 threads, misaligned output."""
    import ml_dtypes

    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float16)
    rng = np.random.default_rng(len(case))

    def same(y, want, exact):
        y, want = np.asarray(y), np.asarray(want).astype(dt)
        np.testing.assert_array_equal(np.isnan(y.astype(np.float32)), np.isnan(want.astype(np.float32)))
        ok = ~np.isnan(want.astype(np.float32))
        got, ref = y.view(np.uint16)[ok].astype(np.int32), want.view(np.uint16)[ok].astype(np.int32)
        if exact:
            np.testing.assert_array_equal(got, ref)
        else:  # (softmax is >= 0: adjacent bit patterns are adjacent values)
            assert np.max(np.abs(got - ref), initial=0) <= 1
            assert np.count_nonzero(got != ref) <= 1e-2 * got.size

    exact = dtype == "float16"  # (bfloat16 streamed stays in order: exact)

    for n in (4097, 10_007, 70_001):
        with np.errstate(over="ignore", invalid="ignore"):
            x = FUSED_ROWS[case](n, rng).astype(dt)
        xb = np.stack([x, x[::-1].copy(), rng.standard_normal(n).astype(dt)])
        for threads in (1, 2):
            y = run("softmax", xb, algorithm="three_pass_reload", isa=isa, threads=threads)
            want = run("softmax", xb.astype(np.float32), algorithm="three_pass_reload", isa=isa, threads=threads)
            same(y, want, exact)
        buf = np.empty(n + 1, dt)
        for stream in (False, True):
            run("softmax", x, out=buf[1:], algorithm="three_pass_reload", isa=isa, stream=stream, threads=1)
            want = run("softmax", x.astype(np.float32), algorithm="three_pass_reload", isa=isa, threads=1)
            same(buf[1:], want, exact or stream)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", twopass.ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_long_row_and_threads(isa, algorithm, dtype, op):
    # One long row split across 2 threads (partial sums merged) against 1 thread and
    # the reference; then a batch split by rows.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(600_001) * 3).astype(dtype)  # > 2 x kMinPerChunk: split
    y1 = run(op, x, algorithm=algorithm, isa=isa, threads=1)
    y2 = run(op, x, algorithm=algorithm, isa=isa, threads=2)
    assert_close(op, x, y1)
    assert_close(op, x, y2)
    xb = (rng.standard_normal((64, 3001)) * 3).astype(dtype)
    assert_close(op, xb, run(op, xb, algorithm=algorithm, isa=isa, threads=2))
    xp = (rng.standard_normal((1, 300_000, 3)) * 3).astype(dtype)  # one long panel, split
    assert_close(op, xp, run(op, xp, axis=1, algorithm=algorithm, isa=isa, threads=2), axis=1)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_streaming_stores(isa, stream):
    # Misaligned outputs exercise the peeled head before aligned streaming stores.
    rng = np.random.default_rng(3)
    buf = np.empty(5003, np.float32)
    for offset in range(0, 17):
        x = rng.standard_normal(4000 - offset).astype(np.float32)
        y = buf[offset : offset + x.size]
        for algorithm in twopass.ALGORITHMS:
            for op in ("softmax", "log_softmax"):
                run(op, x, out=y, algorithm=algorithm, isa=isa, stream=stream, threads=1)
                assert_close(op, x, y)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", [*DTYPES, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("stream", [False, True])
def test_output_alignment_changes_no_bit(isa, dtype, stream):
    """Streaming stores peel a partial head so that they are vector-aligned, and stream
    the whole vectors after the unrolled loop too; the max pass peels its loads: the same
    bits wherever the output starts (every element offset within 64 bytes), for rows
    whose tail after the peel holds whole vectors and a partial one, a batch's rows
    (each row's start moves), and one element; the input moved likewise."""
    rng = np.random.default_rng(5)
    item = np.dtype(dtype).itemsize
    for shape in ((3, 4096), (5, 1000), (2, 37), (1, 1)):
        x = (rng.standard_normal(shape) * 4).astype(dtype)
        buf = np.empty(x.size + 64, dtype)
        base = (-buf.ctypes.data % 64) // item  # buf[base] is 64-byte aligned
        for algorithm in twopass.ALGORITHMS:
            for op in ("softmax", "log_softmax"):
                want = run(op, x, algorithm=algorithm, isa=isa, stream=stream, threads=1)
                for off in range(64 // item):
                    y = buf[base + off : base + off + x.size].reshape(shape)
                    y[...] = 0
                    run(op, x, out=y, algorithm=algorithm, isa=isa, stream=stream, threads=1)
                    np.testing.assert_array_equal(y, want, err_msg=f"{op} {algorithm} {shape} offset {off}")
                    xm = buf[base + off : base + off + x.size].reshape(shape)
                    xm[...] = x
                    got = run(op, xm, algorithm=algorithm, isa=isa, stream=stream, threads=1)
                    np.testing.assert_array_equal(got, want, err_msg=f"{op} {algorithm} {shape} x offset {off}")


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_isas_agree(isa):
    # Every ISA gives (nearly) the same numbers as the scalar baseline.
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 999)) * 5).astype(np.float32)
    for algorithm in twopass.ALGORITHMS:
        a = run("softmax", x, algorithm=algorithm, isa=isa)
        b = run("softmax", x, algorithm=algorithm, isa="scalar")
        np.testing.assert_allclose(a, b, rtol=4e-6, atol=1e-38)


def test_axes_accuracy_report():
    """`python -m twopass accuracy` over non-last axes (panels): the two-pass softmax and
    every log_softmax and logsumexp within a few ulp of the extended-precision reference;
    the max-first softmax, whose exp(x - max) error grows with the spread, no worse than
    torch's on the same inputs (the README's accuracy table)."""
    from twopass.accuracy import measure_axes

    rows = measure_axes()
    torch_ulp = {(r["dtype"], r["op"]): r["max_ulp"] for r in rows if r["impl"] == "torch"}
    mine = [r for r in rows if r["impl"] != "torch"]
    assert {r["impl"].split("/")[0] for r in mine} == set(twopass._dispatch.isa_supported())
    for r in mine:
        if r["op"] == "softmax" and not r["impl"].endswith("two_pass"):
            bound = 1.05 * torch_ulp.get((r["dtype"], "softmax"), 150.0)
        else:
            bound = {"softmax": 8.0, "log_softmax": 3.0, "logsumexp": 2.0}[r["op"]]
        assert r["max_ulp"] <= bound, r
