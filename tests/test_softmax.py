"""softmax and log_softmax (NumPy entry): semantics against torch, out= and in place,
the fast path against the general one, and the algorithm="auto" rule. Special values
are checked for logsumexp too, which shares their engine (`_softmax.compute`)."""

from __future__ import annotations

import math
import mmap
import sys

import numpy as np
import pytest

import twopass
from conftest import ISA_PARAMS, OPS, run
from twopass import _arrays, _core, _dispatch, _softmax
from twopass._softmax import compute

torch = pytest.importorskip("torch")

INF, NAN = np.inf, np.nan
# Rows with special values, each checked against torch on the same float32 input.
SPECIAL_ROWS = [
    [NAN, 1.0, 2.0],
    [INF, 1.0, 2.0],
    [-INF, -INF, -INF],
    [-INF, 1.0, 2.0],
    [3e38, 3e38, -3e38],
    [3e38, 3e38],
    [-3e38, -3e38],
    [INF, NAN, 1.0],
    [INF, -INF],
    [INF, INF],
    [-INF, NAN],
    [0.0],
    [-INF],
    [1e-45, -1e-45, 0.0],
    [-1e30, 1e30],
]


def _torch_ref(op: str, x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x)
    f = {"softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp}[op]
    return f(t, -1).numpy()


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", twopass.ALGORITHMS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("tail", [0, 20])
def test_special_values_match_torch(isa, algorithm, op, tail):
    for row in SPECIAL_ROWS:
        # `tail` ordinary elements after the special ones put them in a SIMD body too.
        x = np.array(row + [0.5] * tail, dtype=np.float32)[None, :]
        y = run(op, x, algorithm=algorithm, isa=isa)
        t = _torch_ref(op, x)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(t), err_msg=f"{op} {row}")
        np.testing.assert_allclose(y, t, rtol=2e-6, atol=0, err_msg=f"{op} {row}")


@pytest.mark.parametrize("op", OPS)
def test_empty_axis(op):
    x = np.zeros((3, 0), np.float32)
    y = getattr(twopass, op)(x)
    t = _torch_ref(op, x)
    assert y.shape == t.shape
    np.testing.assert_array_equal(y, t)  # logsumexp: -inf; the others: empty


def test_zero_rows_and_scalars():
    assert twopass.softmax(np.zeros((0, 5), np.float32)).shape == (0, 5)
    assert twopass.logsumexp(np.zeros((0, 5), np.float32)).shape == (0,)
    assert twopass.softmax(np.float32(3.0)) == 1.0
    assert twopass.logsumexp(np.array(2.0)) == 2.0
    x0 = np.array(5.0, np.float32)
    out0 = np.empty((), np.float32)
    assert twopass.log_softmax(x0, out=out0) is out0 and abs(out0) <= 2 * np.finfo(np.float32).eps
    assert twopass.softmax(x0, out=x0) is x0 and x0 == 1.0
    lse0 = np.empty((), np.float64)
    assert twopass.logsumexp(np.array(2.0), out=lse0) is lse0 and lse0 == 2.0


def test_softmax_of_huge_values():
    y = twopass.softmax(np.array([3e38, 3e38], np.float32))
    np.testing.assert_array_equal(y, [0.5, 0.5])


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_out_and_in_place(op):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 50)).astype(np.float32)
    ref = getattr(twopass, op)(x)
    out = np.empty_like(x)
    assert getattr(twopass, op)(x, out=out) is out
    np.testing.assert_array_equal(out, ref)
    x2 = x.copy()
    assert getattr(twopass, op)(x2, out=x2) is x2
    np.testing.assert_array_equal(x2, ref)
    # A non-contiguous out goes through a temporary.
    big = np.empty((4, 100), np.float32)
    getattr(twopass, op)(x, out=big[:, ::2])
    np.testing.assert_array_equal(big[:, ::2], ref)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("algorithm", twopass.ALGORITHMS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_in_place_special_and_huge_rows(isa, algorithm, dtype, op):
    """In place (out=x), rows that fail the fast path (NaN, +inf, only -inf; huge values
    outside two_pass's accurate domain) are recognised and redone from x, not from what
    a pass already wrote over it: the bits of the same call into a fresh output. Short
    rows, rows longer than the reload's scratch row (its fused passes store exp in y),
    panels of a non-first axis, and a row split along its axis over 2 threads."""
    import ml_dtypes

    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    huge = 6e4 if dt.itemsize == 2 else 3e38
    rng = np.random.default_rng(1)
    layouts = [((6, 1), -1, 1), ((6, 2), -1, 1), ((6, 33), -1, 1), ((6, 5000), -1, 1), ((6, 40), 0, 1)]
    layouts += [((1, 1 << 17), -1, 2)]
    for shape, axis, threads in layouts:
        x = rng.standard_normal(shape)
        rows = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])  # (a view: rows of `axis`)
        rows[0] = -np.inf
        if len(rows) > 1:
            rows[1, -1], rows[2, 0], rows[3] = np.nan, np.inf, huge - rng.random(rows.shape[1])
            rows[4, ::2] = -np.inf
        else:
            rows[0, -1] = huge  # the split row: huge, then only -inf
        for xs in [x] if len(rows) > 1 else [x, np.full(shape, -np.inf)]:
            xs = xs.astype(dt)
            want = run(op, xs, axis=axis, algorithm=algorithm, isa=isa, threads=threads)
            got = xs.copy()
            assert run(op, got, axis=axis, out=got, algorithm=algorithm, isa=isa, threads=threads) is got
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=f"{shape} axis {axis}")
            r = np.moveaxis(xs.astype(np.float64), axis, -1)
            bad = (np.isnan(r) | (r == np.inf)).any(-1) | (r == -np.inf).all(-1)  # NaN rows, as torch
            g = np.moveaxis(got.astype(np.float64), axis, -1)
            assert np.isnan(g[bad]).all() and not np.isnan(g[~bad]).any(), shape


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1000), (2, 3, 65)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_is_the_general_path(op, shape, dtype):
    """Calls on a C-contiguous array over its last axis skip the general checks
    (_softmax._fast), also with out=, threads= and algorithm=; they must give bit for bit
    what the general path (taken here by naming the ISA) gives."""
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype) * 10
    fn = getattr(twopass, op)
    kw = {"keepdims": True} if op == "logsumexp" else {}
    general = compute(op, x, isa=_dispatch.ISA, **kw)
    fast = fn(x, **kw)
    assert fast.shape == general.shape and fast.dtype == general.dtype
    np.testing.assert_array_equal(fast, general)
    if op == "logsumexp":
        np.testing.assert_array_equal(fn(x), general.reshape(shape[:-1]))
        return
    for algo in ("two_pass", "three_pass_reload"):
        want = compute(op, x, algorithm=algo, threads=2, isa=_dispatch.ISA)
        out = np.full_like(x, np.nan)
        assert fn(x, out=out, algorithm=algo, threads=2) is out
        np.testing.assert_array_equal(out, want)
        inplace = x.copy()
        assert fn(inplace, out=inplace, algorithm=algo, threads=1) is inplace
        np.testing.assert_array_equal(inplace, want)


def test_fast_path_keeps_the_errors():
    """What the fast path lets through the general path rejects: a partially
    overlapping or read-only out, bad threads or algorithm."""
    x = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    with pytest.raises(ValueError, match="overlap"):
        twopass.softmax(x[:32], out=x[16:48])
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        twopass.softmax(x, out=ro)
    with pytest.raises(ValueError, match="threads"):
        twopass.softmax(x, threads=0)
    with pytest.raises(TypeError, match="threads"):
        twopass.softmax(x, threads=True)
    with pytest.raises(ValueError, match="unknown algorithm"):
        twopass.softmax(x, algorithm="fast")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_small_calls_in_one_cpp_call(op, dtype, monkeypatch):
    """A C-contiguous array of at most 64 KiB over its last axis is one C++ call
    (csrc/numpy_rows.cpp) whatever `algorithm` and `threads` say: the bits of the general
    path, into a fresh output or a fitting `out=` (returned), None (the Python path) for
    anything else. Lengths either side of log_softmax's SHORT_ROW_BYTES (where "auto"
    leaves the reload), of the halves' softmax scratch row (beyond it: the Python path's
    rule) and of the 64 KiB limit."""
    import ml_dtypes

    dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    if dtype == np.dtype(ml_dtypes.bfloat16):
        compute(op, np.zeros(1, dtype))  # the general path meets bfloat16 first (_core.numpy_bfloat16)
    fast = _softmax._numpy_rows
    assert _dispatch.stream_min_bytes() > _softmax._SMALL_SOFTMAX_BYTES  # (its normal stores: the rule's answer)
    log = op == "log_softmax"
    item = dtype.itemsize
    short = _softmax.SHORT_ROW_BYTES // (4 if item == 2 else item)
    limit = _softmax._SMALL_SOFTMAX_BYTES // item
    scratch = _softmax._RELOAD_SCRATCH_BYTES // 4  # the halves' softmax: "auto" in one call up to here

    def taken(shape, algorithm):
        halves_reload = shape[-1] <= scratch or 2 * math.prod(shape) * 4 <= _softmax.SMALL_HALF_RELOAD_BYTES
        auto_in_call = log or item != 2 or halves_reload or algorithm != "auto"
        return math.prod(shape) <= limit and auto_in_call

    rng = np.random.default_rng(3)
    shapes = [(1,), (7,), (short - 1,), (short,), (short + 1,), (3, 65), (2, 1, 33), (limit,), (4, limit // 4)]
    shapes += [(scratch,), (scratch + 1,), (limit + 1,), (3, limit // 2)]
    for shape in shapes:
        x = (rng.standard_normal(shape) * 10).astype(dtype)
        x.flat[0] = -np.inf
        for algorithm, threads in [("auto", None), ("auto", 1), ("two_pass", None), ("online", 2)]:
            y = fast(x, -1, None, algorithm, threads, log)
            if not taken(shape, algorithm):
                assert y is None, (shape, algorithm)
                continue
            want = compute(op, x, algorithm=algorithm, threads=threads, isa=_dispatch.ISA)  # the general path
            assert y is not None and y.dtype == x.dtype and y.shape == shape and y.flags.c_contiguous
            np.testing.assert_array_equal(y.view(np.uint8), want.view(np.uint8))
            if algorithm == "auto":
                public = getattr(twopass, op)(x, axis=len(shape) - 1)
                np.testing.assert_array_equal(public.view(np.uint8), want.view(np.uint8))
            out = np.full_like(x, np.nan)
            assert fast(x, -1, out, algorithm, threads, log) is out
            np.testing.assert_array_equal(out.view(np.uint8), want.view(np.uint8))
            inplace = x.copy()
            assert getattr(twopass, op)(inplace, out=inplace, algorithm=algorithm, threads=threads) is inplace
            np.testing.assert_array_equal(inplace.view(np.uint8), want.view(np.uint8))
    # a dim of size 1 with any stride is still C-contiguous (NumPy's flag)
    base = (rng.standard_normal(15) * 4).astype(dtype)
    odd = np.lib.stride_tricks.as_strided(base, shape=(3, 1, 5), strides=(5 * item, 7 * item, item))
    assert odd.flags.c_contiguous
    got = fast(odd, -1, None, "auto", None, log)
    np.testing.assert_array_equal(got.view(np.uint8), compute(op, odd, isa=_dispatch.ISA).view(np.uint8))
    # the default thread count is read per call from _dispatch.default_threads (the
    # benchmark swaps it), where the kernels could split the call
    calls = []
    monkeypatch.setattr(_dispatch, "default_threads", lambda: calls.append(1) or 2)
    x = rng.standard_normal((16, limit // 16)).astype(dtype)
    want = compute(op, x, threads=2, isa=_dispatch.ISA)
    np.testing.assert_array_equal(fast(x, -1, None, "auto", None, log).view(np.uint8), want.view(np.uint8))
    assert calls == ([1] if limit >= 2 * _core.MIN_PER_THREAD else [])  # (fewer: one thread whatever)
    monkeypatch.undo()
    x = rng.standard_normal((4, 50)).astype(dtype)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    wide = np.empty((4, 100), dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    declined = [
        (x, 0, None, "auto", None),  # not the last axis
        (x, 2, None, "auto", None),  # out of range: Python raises the AxisError
        (x, None, None, "auto", None),
        (x, np.int64(-1), None, "auto", None),
        (x.T, -1, None, "auto", None),  # not C-contiguous
        (x[:, ::2], -1, None, "auto", None),
        (x.astype(x.dtype.newbyteorder()), -1, None, "auto", None),
        (x.view(np.recarray), -1, None, "auto", None),  # a subclass
        (np.empty((4, 0), dtype), -1, None, "auto", None),  # empty
        (np.array(1.0, dtype), -1, None, "auto", None),  # 0-d
        (x.tolist(), -1, None, "auto", None),
        (x, -1, None, "fast", None),  # not an algorithm: Python raises
        (x, -1, None, np.str_("auto"), None),
        (x, -1, None, "auto", 0),  # threads < 1: Python raises
        (x, -1, None, "auto", -3),
        (x, -1, None, "auto", 1 << 70),
        (x, -1, None, "auto", True),  # a bool is not a thread count
        (x, -1, None, "auto", 2.0),
        (x, -1, ro, "auto", None),  # read-only out: Python raises
        (x, -1, wide, "auto", None),  # wrong shape
        (x, -1, wide[:, ::2], "auto", None),  # not contiguous: Python writes through a temporary
        (x, -1, np.empty_like(x, other), "auto", None),
        (x, -1, x.view(), "auto", None),  # overlaps x without being x
        (x, -1, np.empty_like(x).view(np.recarray), "auto", None),
    ]
    for args in declined:
        assert fast(*args, log) is None, args


# ----------------------------------------------------------------------------------
# algorithm="auto": the rule of _softmax.auto_algorithm, from cache sizes, ISA and threads.
# ----------------------------------------------------------------------------------
def _with_caches(monkeypatch, half_width: bool = False, avx512_half_width: bool = False, **sizes: int) -> None:
    """These caches, and AVX2 and AVX-512 at full width unless `half_width` (AVX2 in two
    128-bit halves) or `avx512_half_width` (AVX-512 in two 256-bit halves)."""
    caches = dict(_dispatch.cache_sizes(), **sizes)
    monkeypatch.setattr(_dispatch, "cache_sizes", lambda: caches)
    monkeypatch.setattr(_dispatch, "avx2_half_width", lambda: half_width)
    monkeypatch.setattr(_dispatch, "avx512_half_width", lambda: avx512_half_width)
    monkeypatch.setattr(_softmax, "_limits", {})


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)])
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_auto_follows_the_cache_sizes(monkeypatch, dtype, isa):
    """softmax takes the reload while x and y fit min(w/2 L3, 16 w L2) (float64 counted
    per element at float32's size), and beyond it while one row's x and y fit w^2 L2,
    w the exp's weight for the dtype and ISA; two_pass otherwise, on one thread at any
    size where the exp dominates (w >= 4). Where the exp is cheapest (w = 1) the cache is
    the L3 on one thread and the L2 on several, and beyond it two_pass, but in short rows.
    The crossovers move with the caches; on one thread with w = 2, 4 L3s (not on a mesh
    L3)."""
    w = _softmax.EXP_WEIGHT[dtype.itemsize, isa if isa != "avx2" else "simd"]
    per = dtype.itemsize // 4
    for l2, l3 in ((1 << 20, 32 << 20), (2 << 20, 300 << 20), (512 << 10, 32 << 20)):
        _with_caches(monkeypatch, L2=l2, L3=l3)
        mesh = l3 > 128 * l2 and w <= 2  # a many-core mesh L3: a quarter of the L2 counts
        cache = (l2 // 4 if mesh else l3 if w == 1 else int(min(w / 2 * l3, 16 * w * l2))) * per
        one = 4 * l3 * per if w == 2 and not mesh else cache  # one thread's budget
        stream_row = (l2 // 4 if mesh else 0 if w == 1 else w * w * l2) * per
        if stream_row == 0:  # w = 1: rows beyond the cache take two_pass, short ones the reload
            rows = 4 * cache // (2 * 4096 * dtype.itemsize) + 1
            assert _softmax.auto_algorithm("softmax", dtype, 4096, rows * 4096, 1, isa) == "two_pass"
            assert _softmax.auto_algorithm("softmax", dtype, 64, rows * 4096, 1, isa) == "three_pass_reload"
        n = one // (2 * dtype.itemsize)  # one row whose x and y fill the budget
        beyond = "three_pass_reload" if w >= 4 else "two_pass"
        assert _softmax.auto_algorithm("softmax", dtype, n, n, 1, isa) == "three_pass_reload"
        assert _softmax.auto_algorithm("softmax", dtype, 2 * n, 2 * n, 1, isa) == beyond
        if stream_row:
            n = stream_row // (2 * dtype.itemsize)  # rows streamed from memory: by the row
            rows = 4 * one // (2 * n * dtype.itemsize) + 1
            assert _softmax.auto_algorithm("softmax", dtype, n, rows * n, 1, isa) == "three_pass_reload"
            assert _softmax.auto_algorithm("softmax", dtype, 2 * n, rows * n, 1, isa) == beyond
        # 2 threads streaming rows: memory-bound where the exp is cheapest, except short
        # rows, and on a mesh L3 rows whose x and y fit a quarter of the L2
        many = 4 * cache // (2 * 4096 * dtype.itemsize) + 1
        want = "two_pass" if w == 1 and not mesh else "three_pass_reload"
        assert _softmax.auto_algorithm("softmax", dtype, 4096, many * 4096, 2, isa) == want
        if mesh:  # ... and beyond that quarter, two_pass (or the reload where the exp dominates)
            n = 2 * stream_row // (2 * dtype.itemsize)
            assert _softmax.auto_algorithm("softmax", dtype, n, 64 * n, 2, isa) == beyond
        assert _softmax.auto_algorithm("softmax", dtype, 64, many * 4096, 2, isa) == "three_pass_reload"
        if w == 1 and not mesh:  # several threads count on the L2 only
            fit = l2 * per // (2 * 4096 * dtype.itemsize)  # rows of 4096 whose x and y fill the L2
            assert _softmax.auto_algorithm("softmax", dtype, 4096, fit * 4096, 2, isa) == "three_pass_reload"
            assert _softmax.auto_algorithm("softmax", dtype, 4096, 2 * fit * 4096, 2, isa) == "two_pass"
            assert _softmax.auto_algorithm("softmax", dtype, 4096, 2 * fit * 4096, 1, isa) == "three_pass_reload"


@pytest.mark.parametrize("l2, l3", [(1 << 20, 32 << 20), (2 << 20, 504 << 20)])
def test_streaming_stores_rule(monkeypatch, l2, l3):
    """Streaming stores past the cache a core counts on (the L3 of a core complex, 16x the
    L2 on a mesh L3) in rows of at least STREAM_MIN_ROW_BYTES, only into an output the
    caller gave (`out=`), never in place and never into a fresh output, on the fast path
    and the general one alike."""
    caches = dict(_dispatch.cache_sizes(), L2=l2, L3=l3)
    monkeypatch.setattr(_dispatch, "cache_sizes", lambda: caches)
    cached = _dispatch.stream_min_bytes
    cached.cache_clear()
    try:
        limit = 16 * l2 if l3 > 128 * l2 else l3
        assert _dispatch.stream_min_bytes() == limit
        x, y = np.zeros(limit // 4 + 1, np.float32), np.zeros(limit // 4 + 1, np.float32)
        y[...] = 1  # (written: its pages are resident)
        assert _arrays.streaming_stores(y, x) and not _arrays.streaming_stores(y[:-1], x[:-1])
        assert not _arrays.streaming_stores(y, x, fresh=True) and not _arrays.streaming_stores(x, x)
        # an `out=` never written since it was mapped (a fresh np.empty past malloc's
        # mmap threshold) is fresh too; once written, it streams
        # (a mapping of its own: np.empty may hand back memory malloc keeps, written before)
        count = max(limit // 4 + 1, 64 << 18)
        mapping = mmap.mmap(-1, 4 * count, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        untouched = np.frombuffer(mapping, np.float32, count)
        if sys.platform.startswith("linux"):
            assert _core.untouched(untouched.ctypes.data, untouched.nbytes)
            assert not _arrays.streaming_stores(untouched, x)
        untouched[...] = 1
        assert not _core.untouched(untouched.ctypes.data, untouched.nbytes)
        assert _arrays.streaming_stores(untouched, x)
        rows = _arrays.STREAM_MIN_ROW_BYTES // 4  # float32 elements of the shortest row that streams
        wide = np.ones((limit // (4 * rows) + 1, rows), np.float32)
        assert _arrays.streaming_stores(wide, x) and not _arrays.streaming_stores(wide.reshape(-1, rows // 2), x)
        # float16 and bfloat16 count at float32's size: the same shapes stream, half shorter ones do not
        import ml_dtypes

        for half in (np.float16, ml_dtypes.bfloat16):
            assert _arrays.streaming_stores(wide.astype(half), x)
            assert not _arrays.streaming_stores(wide.astype(half).reshape(-1, rows // 2), x)
            assert not _arrays.streaming_stores(wide[: wide.shape[0] // 2 - 1].astype(half), x)
        # what reaches the kernels: small arrays, a threshold of 0 bytes
        monkeypatch.setattr(_dispatch, "stream_min_bytes", lambda: 0)
        seen = []
        real = _softmax._core.run
        monkeypatch.setattr(_softmax._core, "run", lambda *a: seen.append(a[-2]) or real(*a))
        monkeypatch.setattr(_arrays, "STREAM_MIN_ROW_BYTES", 0)
        # (the one-call path of small arrays writes with normal stores: it relies on the
        # threshold being above its 64 KiB, test_small_calls_in_one_cpp_call; off here)
        monkeypatch.setattr(_softmax, "_numpy_rows", lambda *a: None)
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        out = np.empty_like(x)
        strided = np.empty((4, 128), np.float32)[:, ::2]  # written through a temporary, then copied
        for fn in (twopass.softmax, twopass.log_softmax):
            seen.clear()
            fn(x), fn(x, out=out), fn(x, axis=0), fn(x, out=out, axis=0), fn(x, out=x), fn(x, out=strided)
            assert seen == [False, True, False, True, False, False], seen
    finally:
        cached.cache_clear()


def test_half_width_avx2_is_told_by_the_cpu_model():
    """AMD Zen and Zen+ (family 17h below model 30h) and Hygon Dhyana split 256-bit
    instructions in two; Zen 2 on, and Intel, do not."""
    split = _dispatch.splits_256bit_ops
    assert split("AuthenticAMD", 0x17, 0x01) and split("AuthenticAMD", 0x17, 0x18)
    assert split("HygonGenuine", 0x18, 0x00)
    assert not split("AuthenticAMD", 0x17, 0x31)  # Zen 2
    assert not split("AuthenticAMD", 0x19, 0x01)  # Zen 3
    assert not split("GenuineIntel", 0x06, 0x55)
    assert not split("GenuineIntel", 0x17, 0x01)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)])
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_auto_on_split_rows(monkeypatch, dtype, isa):
    """A single row that 2 threads split along its axis takes the reload (passes 1 and 2
    fused per chunk) while its x and y fit the L3, or the smaller cache of the rule;
    two_pass beyond it, unless the exp outweighs memory on every thread (w >= 4 per
    thread: scalar). On a many-core mesh L3, where the reload counts on a quarter of the
    L2 (for w <= 2), two_pass beyond that quarter."""
    w = _softmax.EXP_WEIGHT[dtype.itemsize, isa if isa != "avx2" else "simd"]
    per = dtype.itemsize // 4
    reload = "three_pass_reload"
    for l2, l3 in ((1 << 20, 32 << 20), (512 << 10, 8 << 20)):
        _with_caches(monkeypatch, L2=l2, L3=l3)
        cache = l3 if w == 1 else int(min(w / 2 * l3, 16 * w * l2))
        n = min(cache, l3) * per // (2 * dtype.itemsize)  # x and y fill it
        assert _softmax._split_row(n, n, 2) and _softmax._split_row(2 * n, 2 * n, 2)
        assert _softmax.auto_algorithm("softmax", dtype, n, n, 2, isa) == reload
        beyond = reload if w >= 8 else "two_pass"
        assert _softmax.auto_algorithm("softmax", dtype, 2 * n, 2 * n, 2, isa) == beyond
    _with_caches(monkeypatch, L2=2 << 20, L3=504 << 20)
    if w <= 2:
        for n in (1 << 17, 1 << 20, 1 << 24):
            assert _softmax.auto_algorithm("softmax", dtype, n, n, 2, isa) == "two_pass"


def test_half_width_avx512_is_told_by_the_cpu_model():
    """AMD Zen 4 (family 19h, the only one of it with AVX-512) splits 512-bit
    instructions in two; Zen 5 (1Ah) and Intel do not."""
    split = _dispatch.splits_512bit_ops
    assert split("AuthenticAMD", 0x19, 0x11) and split("AuthenticAMD", 0x19, 0x61)
    assert not split("AuthenticAMD", 0x1A, 0x02)  # Zen 5
    assert not split("GenuineIntel", 0x06, 0xCF)  # Emerald Rapids
    assert not split("GenuineIntel", 0x19, 0x11)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_auto_over_panels(monkeypatch, isa):
    """Over a non-last axis (inner > 1): the reload for log_softmax and the halves at any
    length. float32/float64 softmax: the reload while a panel (n steps of the kernels'
    panel width, or of `inner` elements when fewer) fits the L2, beyond it the rows' rule
    (float32 on AVX-512, a 32 MiB L3 and 1 GiB of x: two_pass); except that a panel of
    steps a whole row apart, longer than the kernels' scratch panel, takes the
    recompute from a sixteenth of the L2 on. The rows (inner 1) keep their own rule."""
    l2 = 1 << 20
    _with_caches(monkeypatch, L2=l2, L3=32 << 20)
    reload, recompute = "three_pass_reload", "three_pass_recompute"
    big = 1 << 28
    for dtype in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), ml_dtypes_bf16()):
        step, scratch = _softmax._panel_geometry(dtype.itemsize, isa)
        assert step == _core.panel_lanes(_dispatch.ISA_CODES[isa], dtype.itemsize) * dtype.itemsize
        fits = l2 // step  # the longest axis whose panel fits the L2
        wide = 4096  # columns: a panel's steps lie a row apart

        def auto(op, n, inner=wide, dtype=dtype):
            return _softmax.auto_algorithm(op, dtype, n, big, 1, isa, inner=inner)

        for n in (4, fits, 4 * fits):
            assert auto("log_softmax", n) == reload
        if dtype.itemsize == 2:
            assert auto("softmax", 4 * fits) == reload
            continue
        rows_rule = _softmax.auto_algorithm("softmax", dtype, fits + 1, big, 1, isa)
        for n in (4, scratch, scratch + 1, fits, fits + 1, 4 * fits):
            if n > scratch:
                expected = reload if n * step <= l2 // 16 else recompute
            else:
                expected = reload if n <= fits else rows_rule
            assert auto("softmax", n) == expected, n
        if isa == "avx512" and _core.isa_supported(_dispatch.ISA_CODES[isa]):
            expected = (4096, recompute) if dtype.itemsize == 4 else (32, reload)
            assert (scratch, auto("softmax", scratch + 1)) == expected
        # a panel narrower than its width: `inner` elements a step (contiguous), so a
        # longer axis fits, and beyond it the rows' rule
        if 2 * dtype.itemsize < step:
            narrow = l2 // (2 * dtype.itemsize)
            assert auto("softmax", narrow, inner=2) == reload
            rows_rule = _softmax.auto_algorithm("softmax", dtype, narrow + 1, big, 1, isa)
            assert auto("softmax", narrow + 1, inner=2) == rows_rule
        # rows: log_softmax of long rows is two_pass as before
        assert _softmax.auto_algorithm("log_softmax", dtype, 4 * fits, big, 1, isa) == "two_pass"


def ml_dtypes_bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def test_auto_on_half_width_avx512(monkeypatch):
    """On AMD Zen 4 (AVX-512 in two halves; 1 MiB L2, 32 MiB L3) float64's exp weighs as
    on a full-width AVX2 (w = 2), so batches of rows that stream from memory take the
    reload while one row's x and y fit 4 L2s (Zen 4 VM, `bench --tune`: 4096x4096 and
    64x262144 0.89-0.96 of two_pass's time, 32x128256 on 2 threads 0.80-0.83); float32
    keeps w = 1 (64x262144 on 1 thread: two_pass 1.32x faster)."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    _with_caches(monkeypatch, avx512_half_width=True, L2=1 << 20, L3=32 << 20)
    assert (_softmax.exp_weight(4, "avx512"), _softmax.exp_weight(8, "avx512")) == (1, 2)
    assert _softmax.exp_weight(8, "avx2") == 4  # (the AVX2 build runs at full width there)
    reload = "three_pass_reload"
    for rows, n in ((4096, 4096), (64, 262144), (32, 128256)):
        for threads in (1, 2):
            assert _softmax.auto_algorithm("softmax", f64, n, rows * n, threads, "avx512") == reload
    assert _softmax.auto_algorithm("softmax", f32, 262144, 64 * 262144, 1, "avx512") == "two_pass"
    # one thread, single rows: the reload while x and y fit 4 L3s (w = 2), two_pass beyond
    assert _softmax.auto_algorithm("softmax", f64, 1 << 24, 1 << 24, 1, "avx512") == reload
    assert _softmax.auto_algorithm("softmax", f64, 1 << 25, 1 << 25, 1, "avx512") == "two_pass"
    _with_caches(monkeypatch, avx512_half_width=False, L2=1 << 20, L3=32 << 20)
    assert _softmax.auto_algorithm("softmax", f64, 4096, 4096 * 4096, 1, "avx512") == "two_pass"


def test_auto_on_half_width_avx2(monkeypatch):
    """Where AVX2 runs at half width the exp weighs twice as much (float32 w = 4, float64
    8), so the reload's one exp per element wins further (Zen 1 VM, 512 KiB L2, 8 MiB L3):
    float32 on one thread at every size; on 2 threads a row split along its axis up to
    x and y of half the cache (1M), two_pass beyond; float64 the reload everywhere. A
    full-width AVX2 on the same caches keeps two_pass for long rows."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    _with_caches(monkeypatch, half_width=True, L2=512 << 10, L3=8 << 20)
    assert (_softmax.exp_weight(4, "avx2"), _softmax.exp_weight(8, "avx2")) == (4, 8)
    assert (_softmax.exp_weight(4, "avx512"), _softmax.exp_weight(4, "scalar")) == (1, 8)
    reload = "three_pass_reload"
    for n in (1 << 16, 1 << 20, 1 << 22, 1 << 26):
        assert _softmax.auto_algorithm("softmax", f32, n, n, 1, "avx2") == reload
        assert _softmax.auto_algorithm("softmax", f32, n, n, 2, "avx2") == (reload if n <= 1 << 20 else "two_pass")
        for threads in (1, 2):
            assert _softmax.auto_algorithm("softmax", f64, n, n, threads, "avx2") == reload
    for rows, n in ((4096, 4096), (64, 262144), (32, 128256)):
        for threads in (1, 2):
            assert _softmax.auto_algorithm("softmax", f32, n, rows * n, threads, "avx2") == reload
    _with_caches(monkeypatch, half_width=False, L2=512 << 10, L3=8 << 20)
    assert _softmax.auto_algorithm("softmax", f32, 1 << 26, 1 << 26, 1, "avx2") == "two_pass"
    assert _softmax.auto_algorithm("softmax", f64, 1 << 26, 1 << 26, 2, "avx2") == "two_pass"


def test_auto_small_calls_skip_the_rule():
    """The fast path's shortcut for small softmax calls names what the rule names."""
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        n = _softmax._SMALL_SOFTMAX_BYTES // dtype.itemsize
        for threads in (1, 2):
            assert _softmax.auto_algorithm("softmax", dtype, n, n, threads) == "three_pass_reload"
            assert _softmax.auto_algorithm("softmax", dtype, 8, n, threads) == "three_pass_reload"


def test_auto_on_a_large_shared_l3(monkeypatch):
    """The case of the issue: a float32 row of 2^24 (x and y 128 MiB) on a Xeon with a
    300 MiB L3 and 2 MiB of L2 per core ran cold 1.4x faster with two_pass."""
    _with_caches(monkeypatch, L2=2 << 20, L3=300 << 20)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert _softmax.auto_algorithm("softmax", f32, 1 << 24, 1 << 24, 1, "avx512") == "two_pass"
    # and the rows that fit the L3 but not the L2 (480 MiB L3, `bench --tune`): 256K..4M
    # and 32x128256 two_pass; 16K and 4096x4096 (rows of 32 KiB) the reload
    _with_caches(monkeypatch, L2=2 << 20, L3=480 << 20)
    for dtype in (f32, f64):
        for n in (1 << 18, 1 << 20, 1 << 22):
            assert _softmax.auto_algorithm("softmax", dtype, n, n, 1, "avx512") == "two_pass"
        assert _softmax.auto_algorithm("softmax", dtype, 1 << 14, 1 << 14, 1, "avx512") == "three_pass_reload"
        assert _softmax.auto_algorithm("softmax", dtype, 4096, 4096 * 4096, 1, "avx512") == "three_pass_reload"
    assert _softmax.auto_algorithm("softmax", f32, 128256, 32 * 128256, 1, "avx512") == "two_pass"


def test_auto_on_a_split_row_and_on_rows(monkeypatch):
    """A row that 2 threads split along its axis takes the reload while its x and y fit
    the L3 (test_auto_on_split_rows), two_pass beyond; the same row on one thread, or
    rows one per thread, follow the cache rule (an 8 MiB L2 here, so that x and y of the
    row, 4 MiB, fit it)."""
    _with_caches(monkeypatch, L2=8 << 20, L3=32 << 20)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    n = 2 * _softmax._MIN_PER_CHUNK
    assert _softmax._split_row(n, n, 2) and not _softmax._split_row(n, 2 * n, 2)
    for dtype in (f32, f64):
        for isa in ("avx512", "avx2"):
            for threads, size in ((1, n), (2, n), (2, 2 * n)):
                assert _softmax.auto_algorithm("softmax", dtype, n, size, threads, isa) == "three_pass_reload"
    big = 8 << 20  # float64 x and y of 128 MiB: beyond the L3
    assert _softmax.auto_algorithm("softmax", f64, big, big, 2, "avx2") == "two_pass"
    assert _softmax.auto_algorithm("softmax", f32, 2 * big, 2 * big, 2, "avx512") == "two_pass"


def test_auto_halves_reload_rows_that_keep_exp_in_float32(monkeypatch):
    """float16/bfloat16 softmax: the reload (exp once, kept in float32) while a row fits
    the reload's scratch row; up to its per-thread wide row, float16 by float32's rule
    (the same arithmetic), bfloat16 the reload (its paired loads and stores); two_pass
    beyond it and on a row split over threads (the reload would recompute exp). Their
    log_softmax follows the short-row rule. (Caches of a core complex: a mesh L3 has
    its own float16 rule, test_auto_float16_on_a_mesh_l3.)"""
    import ml_dtypes

    _with_caches(monkeypatch, L2=1 << 20, L3=32 << 20)

    n = _softmax._RELOAD_SCRATCH_BYTES // 4
    wide = _softmax._RELOAD_WIDE_ROW
    f32 = np.dtype(np.float32)
    try:  # (twopass.torch passes its own dtypes)
        import torch

        torch_bf16 = torch.bfloat16
    except ImportError:
        torch_bf16 = None
    for dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        for threads in (1, 2):
            assert _softmax.auto_algorithm("softmax", dtype, n, 64 * n, threads) == "three_pass_reload"
            for m, rows in ((n + 1, 64), (32000, 8), (128256, 32), (wide, 4), (32000, 2048)):
                want = _softmax.auto_algorithm("softmax", f32, m, rows * m, threads)
                if dtype.name == "bfloat16":
                    want = "three_pass_reload"
                    if torch_bf16 is not None:
                        assert _softmax.auto_algorithm("softmax", torch_bf16, m, rows * m, threads) == want
                assert _softmax.auto_algorithm("softmax", dtype, m, rows * m, threads) == want
            assert _softmax.auto_algorithm("softmax", dtype, wide + 1, 4 * (wide + 1), threads) == "two_pass"
            assert _softmax.auto_algorithm("log_softmax", dtype, n, 64 * n, threads) == "two_pass"
            assert _softmax.auto_algorithm("log_softmax", dtype, 100, 6400, threads) == "three_pass_reload"
        assert _softmax.auto_algorithm("softmax", dtype, wide, wide, 2) == "two_pass"  # one row, split


def test_auto_float16_on_a_mesh_l3(monkeypatch):
    """Under a mesh L3 float16 streams rows longer than a sixteenth of the L2 (x and y
    in float32 bytes) through two_pass where float32's rule would take the reload (its
    float16 form is the slower there); rows of 4096 and calls within a quarter of the
    L2 keep the reload, bfloat16 keeps it throughout, and elsewhere float16 follows
    float32."""
    import ml_dtypes

    f16, bf16, f32 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)
    _with_caches(monkeypatch, L2=2 << 20, L3=260 << 20)  # Emerald Rapids
    for threads in (1, 2):
        for n, rows in ((32000, 8), (32000, 64), (32000, 256), (16400, 1024)):
            assert _softmax.auto_algorithm("softmax", f32, n, rows * n, threads, "avx512") == "three_pass_reload"
            assert _softmax.auto_algorithm("softmax", f16, n, rows * n, threads, "avx512") == "two_pass", (n, rows)
            assert _softmax.auto_algorithm("softmax", bf16, n, rows * n, threads, "avx512") == "three_pass_reload"
        for n, rows in ((4096, 4096), (32000, 1), (8192, 2)):  # short rows; calls that fit
            assert _softmax.auto_algorithm("softmax", f16, n, rows * n, threads, "avx512") == "three_pass_reload"
    for caches in ({"L2": 1 << 20, "L3": 32 << 20}, {"L2": 2 << 20, "L3": 36 << 20}):  # core complex, client ring
        _with_caches(monkeypatch, **caches)
        for n, rows in ((32000, 8), (32000, 256), (16400, 1024), (128256, 32)):
            want = _softmax.auto_algorithm("softmax", f32, n, rows * n, 1, "avx512")
            assert _softmax.auto_algorithm("softmax", f16, n, rows * n, 1, "avx512") == want


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_small_half_calls_restate_the_rule(monkeypatch, isa):
    """The small calls in one C++ call give a float16/bfloat16 softmax beyond the scratch
    row the reload while x and y (in float32 bytes) are within SMALL_HALF_RELOAD_BYTES:
    auto_algorithm must say the same on every thread count, whatever the caches (a
    desktop, a small-L2 Zen 1, a mesh-L3 server), and that limit must cover at least
    the calls of a row that fits the small call."""
    import ml_dtypes

    limit = _softmax._SMALL_SOFTMAX_BYTES // 2  # elements of a small half call
    scratch = _softmax._RELOAD_SCRATCH_BYTES // 4
    for caches in ({"L2": 1 << 20, "L3": 32 << 20}, {"L2": 512 << 10, "L3": 8 << 20}, {"L2": 2 << 20, "L3": 300 << 20}):
        _with_caches(monkeypatch, half_width=isa == "avx2", **caches)
        monkeypatch.setattr(_dispatch, "ISA", isa)
        small = _softmax._small_half_reload_bytes()
        assert small >= 2 * scratch * 4, caches  # at least a row past the scratch row
        for dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
            for n in (scratch + 1, 2 * scratch, limit // 2, limit):
                for rows in (1, 2, limit // n):
                    if 2 * rows * n * 4 > small:
                        continue
                    for threads in (1, 2, 3, 8):
                        got = _softmax.auto_algorithm("softmax", dtype, n, rows * n, threads)
                        assert got == "three_pass_reload", (caches, dtype, n, rows, threads)


def test_auto_log_softmax_takes_two_pass_beyond_short_rows():
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        short = _softmax.SHORT_ROW_BYTES // dtype.itemsize
        assert _softmax.auto_algorithm("log_softmax", dtype, short - 1, 1 << 20) == "three_pass_reload"
        assert _softmax.auto_algorithm("log_softmax", dtype, short, 1 << 20) == "two_pass"
        assert _softmax.auto_algorithm("log_softmax", dtype, 1 << 24, 1 << 24, 2) == "two_pass"


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(5, 100), (3, 700), (1, 1 << 19)])
@pytest.mark.parametrize("threads", [1, 2])
def test_auto_runs_what_the_rule_names(op, shape, threads):
    """A plain call gives bit for bit what the algorithm the rule names gives."""
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 5
    name = _softmax.auto_algorithm(op, x.dtype, shape[-1], x.size, threads)
    want = compute(op, x, algorithm=name, threads=threads, isa=_dispatch.ISA)
    np.testing.assert_array_equal(getattr(twopass, op)(x, threads=threads), want)
    np.testing.assert_array_equal(compute(op, x, threads=threads, isa=_dispatch.ISA), want)
