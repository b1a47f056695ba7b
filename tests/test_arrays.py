"""What every NumPy entry shares (`twopass._arrays`): argument errors, the ISA
environment variable, memory layouts, half precision, torch tensors in and out, the GIL."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import twopass
from conftest import OPS, assert_close

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")


def test_bad_dtype():
    # Integers and booleans are computed in float64 (test_numpy_conventions.py); complex,
    # strings and objects are not numbers twopass computes.
    for dt in (np.complex64, np.complex128, np.str_, np.object_):
        with pytest.raises(TypeError, match=np.dtype(dt).name if dt is not np.str_ else "<U"):
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


def test_prefetch_env_sets_the_distance_and_rejects_bad_values():
    code = "import twopass; print(twopass.info()['prefetch_bytes'])"
    for value, want in (("0", 0), ("4096", 4096), ("", 8192)):
        env = dict(os.environ, TWOPASS_PREFETCH_BYTES=value)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert int(r.stdout) == want
    for bad in ("lots", "-64", str(2 << 20)):
        env = dict(os.environ, TWOPASS_PREFETCH_BYTES=bad)
        r = subprocess.run([sys.executable, "-c", "import twopass"], env=env, capture_output=True, text=True)
        assert r.returncode != 0 and "TWOPASS_PREFETCH_BYTES" in r.stderr


def test_spin_env_sets_the_wait_and_rejects_bad_values():
    code = "import twopass; print(twopass.info()['spin_us'])"
    for value, want in (("0", 0), ("300", 300), ("", 50)):
        env = dict(os.environ, TWOPASS_SPIN_US=value)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert int(r.stdout) == want
    for bad in ("long", "-1", "2000000"):
        env = dict(os.environ, TWOPASS_SPIN_US=bad)
        r = subprocess.run([sys.executable, "-c", "import twopass"], env=env, capture_output=True, text=True)
        assert r.returncode != 0 and "TWOPASS_SPIN_US" in r.stderr


@pytest.mark.parametrize("spin_us", [0, 50, 500])
def test_worker_pool_gives_the_bits_of_one_thread(spin_us):
    """Multi-threaded calls run on a pool of workers kept between calls
    (csrc/thread_pool.cpp): spinning or asleep (spin 0, and pauses between calls),
    woken or not (small and large jobs), with several Python threads calling at once
    (one job at a time takes the pool, the others their own threads), a call gives the
    bits it gives alone. (Thread counts may differ from each other: "auto" and the
    split of a long row follow the count.)"""
    import threading
    import time

    from twopass import _core

    rng = np.random.default_rng(11)
    shapes = [(64, 1024), (3, 70001), (1200, 1000), (1, 1 << 20)]  # rows, ranges, a long row split
    xs = [(rng.standard_normal(s) * 3).astype(np.float32) for s in shapes]
    counts = (1, 2, 3, 4)
    want = {(i, op, t): getattr(twopass, op)(x, threads=t) for i, x in enumerate(xs) for op in OPS for t in counts}
    saved = _core.spin_us()
    _core.set_spin_us(spin_us)
    errors = []

    def caller(seed: int) -> None:
        r = np.random.default_rng(seed)
        for _ in range(20):
            i = int(r.integers(len(xs)))
            op = OPS[int(r.integers(len(OPS)))]
            t = int(r.integers(1, 5))
            got = getattr(twopass, op)(xs[i], threads=t)
            if not np.array_equal(got, want[i, op, t]):
                errors.append((i, op))
            if r.random() < 0.2:
                time.sleep(0.002)  # the workers fall asleep (spin 0: always)

    try:
        caller(0)
        threads = [threading.Thread(target=caller, args=(s,)) for s in range(1, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _core.set_spin_us(saved)
    assert errors == []


def test_worker_pool_survives_fork():
    """A forked child has none of its parent's worker threads: it starts its own."""
    import multiprocessing as mp

    x = np.random.default_rng(2).standard_normal((512, 1024)).astype(np.float32)
    want = twopass.softmax(x, threads=2)  # (and the parent's pool exists)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as p:
        got = p.apply(_softmax_two_threads, (x,))
    np.testing.assert_array_equal(got, want)


def _softmax_two_threads(x):
    return twopass.softmax(x, threads=2)


def test_avx512_bf16_env_switches_the_instruction_off_and_rejects_bad_values():
    from twopass import _core

    code = "import twopass; print(twopass.info()['avx512_bf16'])"
    for value, want in (("0", False), ("", _core.avx512_bf16_supported()), ("1", _core.avx512_bf16_supported())):
        env = dict(os.environ, TWOPASS_AVX512_BF16=value)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert r.stdout.strip() == str(want)
    env = dict(os.environ, TWOPASS_AVX512_BF16="yes")
    r = subprocess.run([sys.executable, "-c", "import twopass"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "TWOPASS_AVX512_BF16" in r.stderr
    if not _core.avx512_bf16_supported():
        with pytest.raises(ValueError, match="AVX512-BF16"):
            _core.set_avx512_bf16(True)


@pytest.mark.parametrize("algorithm", ["two_pass", "three_pass_reload"])
def test_results_do_not_depend_on_the_prefetch_distance(algorithm):
    """Prefetches move data, never values: every distance gives the same bits (rows
    that span several prefetch steps, a batch whose next row is prefetched)."""
    from twopass import _core

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((37, 3001)) * 4).astype(np.float32)
    saved = _core.prefetch_bytes()
    kw = {op: {} if op == "logsumexp" else {"algorithm": algorithm} for op in OPS}
    try:
        got = []
        for d in (0, 64, 8192, 1 << 20):
            _core.set_prefetch_bytes(d)
            got.append([getattr(twopass, op)(x, **kw[op]) for op in OPS])
        for g in got[1:]:
            for a, b in zip(got[0], g):
                np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match="prefetch distance"):
            _core.set_prefetch_bytes(-1)
    finally:
        _core.set_prefetch_bytes(saved)


def test_transposed_and_strided_views():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((40, 60)).astype(np.float32)
    for view in (base.T, base[::2, ::3], base[::-1, ::-1], base[:, 5:45], base.T[::-1]):
        for axis in (0, 1):
            for op in OPS:
                assert_close(op, view, getattr(twopass, op)(view, axis=axis), axis=axis)


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
