"""The public API: semantics against torch, argument errors, layouts, dtypes, frameworks."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import twopass
from conftest import ISA_PARAMS, OPS, assert_close, run
from twopass import _api, _dispatch
from twopass._api import compute

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

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


# ---- errors ----
def test_bad_dtype():
    for dt in (np.int32, np.int64, np.complex64, np.bool_):
        with pytest.raises(TypeError, match=np.dtype(dt).name):
            twopass.softmax(np.zeros(4, dt))


def test_bad_axis():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(np.exceptions.AxisError):
        twopass.softmax(x, axis=2)
    with pytest.raises(np.exceptions.AxisError):
        twopass.logsumexp(x, axis=-3)
    with pytest.raises(TypeError):
        twopass.softmax(x, axis=1.0)


def test_bad_algorithm_lists_choices():
    with pytest.raises(ValueError, match="two_pass.*three_pass_reload.*three_pass_recompute.*online"):
        twopass.softmax(np.zeros(3, np.float32), algorithm="fast")


@pytest.mark.parametrize("threads", [0, -1])
def test_bad_threads(threads):
    with pytest.raises(ValueError, match="threads"):
        twopass.softmax(np.zeros(3, np.float32), threads=threads)


def test_threads_type():
    with pytest.raises(TypeError):
        twopass.softmax(np.zeros(3, np.float32), threads=1.5)
    with pytest.raises(TypeError):
        twopass.softmax(np.zeros(3, np.float32), threads=True)


def test_bad_out():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        twopass.softmax(x, out=np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        twopass.softmax(x, out=np.zeros((2, 3), np.float64))
    ro = np.zeros((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        twopass.softmax(x, out=ro)
    buf = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        twopass.softmax(buf[:6].reshape(2, 3), out=buf[1:].reshape(2, 3))
    with pytest.raises(ValueError, match="shape"):
        twopass.logsumexp(x, out=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        twopass.logsumexp(x, out=x[:, 0])


def test_unknown_isa_env_is_a_clear_error():
    env = dict(os.environ, TWOPASS_ISA="sse9")
    r = subprocess.run([sys.executable, "-c", "import twopass"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "TWOPASS_ISA" in r.stderr and "sse9" in r.stderr
    missing = [i for i in ("avx512", "neon", "avx2") if i not in twopass.info()["isa_supported"]]
    if missing:
        env["TWOPASS_ISA"] = missing[0]
        r = subprocess.run([sys.executable, "-c", "import twopass"], env=env, capture_output=True, text=True)
        assert r.returncode != 0 and "cannot run it" in r.stderr


def test_isa_env_forces_scalar():
    env = dict(os.environ, TWOPASS_ISA="scalar")
    code = "import twopass; print(twopass.info()['isa'])"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "scalar"


# ---- out=, in place, keepdims, layouts ----
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


def test_transposed_and_strided_views():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((40, 60)).astype(np.float32)
    for view in (base.T, base[::2, ::3], base[::-1, ::-1], base[:, 5:45], base.T[::-1]):
        for axis in (0, 1):
            for op in OPS:
                assert_close(op, view, getattr(twopass, op)(view, axis=axis), axis=axis)


# ---- dtypes and frameworks ----
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_half_dtypes(dtype, op):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5, 300)) * 3).astype(dtype)
    y = getattr(twopass, op)(x)
    assert y.dtype == x.dtype
    # Computed in float32 from the half input, then rounded once to the half dtype.
    assert_close(op, x.astype(np.float32), y.astype(np.float32), out_dtype=dtype)


@pytest.mark.parametrize("op", OPS)
def test_torch_tensors_in_torch_out(op):
    t = torch.randn(6, 70)
    y = getattr(twopass, op)(t)
    assert isinstance(y, torch.Tensor)
    ref = {"softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp}[op](t, -1)
    torch.testing.assert_close(y, ref, rtol=2e-6, atol=2e-6)
    tb = t.to(torch.bfloat16)
    yb = getattr(twopass, op)(tb, axis=0)
    assert isinstance(yb, torch.Tensor) and yb.dtype == torch.bfloat16
    refb = {"softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp}[op](tb.float(), 0)
    torch.testing.assert_close(yb.float(), refb, rtol=1e-2, atol=1e-2)


def test_torch_out_in_place_is_zero_copy():
    t = torch.randn(3, 33)
    ref = torch.softmax(t, -1)
    ptr = t.data_ptr()
    assert twopass.softmax(t, out=t) is t
    assert t.data_ptr() == ptr
    torch.testing.assert_close(t, ref)


def test_accepts_lists_and_array_likes():
    np.testing.assert_allclose(twopass.softmax([1.0, 1.0]), [0.5, 0.5])


def test_gil_is_released_while_kernels_run():
    # The main thread keeps running Python while another thread is inside a kernel:
    # with the GIL held it could not take a single timestamp inside that window.
    import threading
    import time

    x = np.random.default_rng(5).standard_normal(1 << 23).astype(np.float32)
    window = []

    def worker():
        t0 = time.perf_counter()
        twopass.softmax(x, threads=1, algorithm="three_pass_reload")
        window.append((t0, time.perf_counter()))

    stamps = []
    th = threading.Thread(target=worker)
    th.start()
    while th.is_alive():
        stamps.append(time.perf_counter())
    th.join()
    t0, t1 = window[0]
    inside = [s for s in stamps if t0 < s < t1]
    assert len(inside) >= 10, f"{len(inside)} main-thread steps during a {1e3 * (t1 - t0):.1f} ms kernel"


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1000), (2, 3, 65)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_is_the_general_path(op, shape, dtype):
    """Calls on a C-contiguous array over its last axis skip the general checks
    (_api._fast), also with out=, threads= and algorithm=; they must give bit for bit
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


# ----------------------------------------------------------------------------------
# algorithm="auto": the rule of _api._auto_algorithm, from cache sizes, ISA and threads.
# ----------------------------------------------------------------------------------
def _with_caches(monkeypatch, **sizes: int) -> None:
    caches = dict(_dispatch.cache_sizes(), **sizes)
    monkeypatch.setattr(_dispatch, "cache_sizes", lambda: caches)
    monkeypatch.setattr(_api, "_limits", {})


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)])
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_auto_follows_the_cache_sizes(monkeypatch, dtype, isa):
    """softmax takes the reload while x and y fit min(w/2 L3, 16 w L2) (float64 counted
    per element at float32's size), and beyond it while one row's x and y fit w^2 L2,
    w the exp's weight for the dtype and ISA; two_pass otherwise, on one thread at any
    size where the exp dominates (w >= 4). The crossovers move with the caches."""
    w = _api.EXP_WEIGHT[dtype.itemsize, isa if isa != "avx2" else "simd"]
    per = dtype.itemsize // 4
    for l2, l3 in ((1 << 20, 32 << 20), (2 << 20, 300 << 20), (512 << 10, 32 << 20)):
        _with_caches(monkeypatch, L2=l2, L3=l3)
        cache = int(min(w / 2 * l3, 16 * w * l2)) * per
        n = cache // (2 * dtype.itemsize)  # one row whose x and y fill the cache
        beyond = "three_pass_reload" if w >= 4 else "two_pass"
        assert _api._auto_algorithm("softmax", dtype, n, n, 1, isa) == "three_pass_reload"
        assert _api._auto_algorithm("softmax", dtype, 2 * n, 2 * n, 1, isa) == beyond
        n = w * w * l2 * per // (2 * dtype.itemsize)  # rows streamed from memory: by the row
        rows = 4 * cache // (2 * n * dtype.itemsize) + 1
        assert _api._auto_algorithm("softmax", dtype, n, rows * n, 1, isa) == "three_pass_reload"
        assert _api._auto_algorithm("softmax", dtype, 2 * n, rows * n, 1, isa) == beyond
        # 2 threads streaming rows: memory-bound where the exp is cheapest, except short rows
        many = 4 * cache // (2 * 4096 * dtype.itemsize) + 1
        want = "two_pass" if w == 1 else "three_pass_reload"
        assert _api._auto_algorithm("softmax", dtype, 4096, many * 4096, 2, isa) == want
        assert _api._auto_algorithm("softmax", dtype, 64, many * 4096, 2, isa) == "three_pass_reload"


def test_auto_small_calls_skip_the_rule():
    """The fast path's shortcut for small softmax calls names what the rule names."""
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        n = _api._SMALL_SOFTMAX_BYTES // dtype.itemsize
        for threads in (1, 2):
            assert _api._auto_algorithm("softmax", dtype, n, n, threads) == "three_pass_reload"
            assert _api._auto_algorithm("softmax", dtype, 8, n, threads) == "three_pass_reload"


def test_auto_on_a_large_shared_l3(monkeypatch):
    """The case of the issue: a float32 row of 2^24 (x and y 128 MiB) on a Xeon with a
    300 MiB L3 and 2 MiB of L2 per core ran cold 1.4x faster with two_pass."""
    _with_caches(monkeypatch, L2=2 << 20, L3=300 << 20)
    assert _api._auto_algorithm("softmax", np.dtype(np.float32), 1 << 24, 1 << 24, 1, "avx512") == "two_pass"


def test_auto_splits_rows_with_two_pass(monkeypatch):
    """A row that 2 threads split along its axis takes two_pass (a parallel region per
    pass), unless the exp dominates (w >= 4) and it fits half the cache; the same row
    on one thread, or rows one per thread, follow the cache rule."""
    _with_caches(monkeypatch, L2=1 << 20, L3=32 << 20)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    n = 2 * _api._MIN_PER_CHUNK
    assert _api._auto_algorithm("softmax", f32, n, n, 1, "avx512") == "three_pass_reload"
    assert _api._auto_algorithm("softmax", f32, n, n, 2, "avx512") == "two_pass"
    assert _api._auto_algorithm("softmax", f32, n, 2 * n, 2, "avx512") == "three_pass_reload"
    assert _api._auto_algorithm("softmax", f64, n, n, 2, "avx512") == "two_pass"
    assert _api._auto_algorithm("softmax", f64, n, n, 2, "avx2") == "three_pass_reload"
    assert _api._auto_algorithm("softmax", f64, 16 * n, 16 * n, 2, "avx2") == "two_pass"


def test_auto_log_softmax_takes_two_pass_beyond_short_rows():
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        short = _api.SHORT_ROW_BYTES // dtype.itemsize
        assert _api._auto_algorithm("log_softmax", dtype, short - 1, 1 << 20) == "three_pass_reload"
        assert _api._auto_algorithm("log_softmax", dtype, short, 1 << 20) == "two_pass"
        assert _api._auto_algorithm("log_softmax", dtype, 1 << 24, 1 << 24, 2) == "two_pass"


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(5, 100), (3, 700), (1, 1 << 19)])
@pytest.mark.parametrize("threads", [1, 2])
def test_auto_runs_what_the_rule_names(op, shape, threads):
    """A plain call gives bit for bit what the algorithm the rule names gives."""
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 5
    name = _api._auto_algorithm(op, x.dtype, shape[-1], x.size, threads)
    want = compute(op, x, algorithm=name, threads=threads, isa=_dispatch.ISA)
    np.testing.assert_array_equal(getattr(twopass, op)(x, threads=threads), want)
    np.testing.assert_array_equal(compute(op, x, threads=threads, isa=_dispatch.ISA), want)
