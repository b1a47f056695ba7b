"""twopass._alloc: fresh outputs on 2 MiB pages. The buffer's shape, dtype, alignment and
life (freed with the array, no growth over many calls), and that the NumPy entries give
the same results through it as through np.empty."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import twopass
from twopass import _alloc

MIB = 1 << 20


@pytest.fixture
def forced(monkeypatch):
    """_alloc's own mappings from 1 MiB up, whatever this machine's THP mode; the cache
    of freed mappings empty at the start."""
    if not hasattr(_alloc.mmap, "MADV_HUGEPAGE"):
        pytest.skip("no MADV_HUGEPAGE on this platform")
    monkeypatch.setattr(_alloc, "ENABLED", True)
    monkeypatch.setattr(_alloc, "HUGE_THRESHOLD", MIB)
    monkeypatch.setattr(_alloc, "_cache", [])


def _mapping(a: np.ndarray):
    """The mmap behind an array from _alloc.empty (None: from np.empty)."""
    return _alloc.mapping(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int8])
@pytest.mark.parametrize("shape", [(MIB,), (1024, 1031), (3, 5, 70001), 1 << 19])
def test_shape_dtype_alignment_writable(forced, dtype, shape):
    a = _alloc.empty(shape, dtype)
    want = (shape,) if isinstance(shape, int) else shape
    assert a.shape == want and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    if a.nbytes >= MIB:
        assert _mapping(a) is not None
        assert a.ctypes.data % _alloc.HUGE_PAGE == 0
        assert len(_mapping(a)) >= a.nbytes + (a.ctypes.data - _addr(_mapping(a)))
    a[...] = 7  # every byte writable, the last element included
    assert a.reshape(-1)[-1] == 7 and a.reshape(-1)[0] == 7


def _addr(m) -> int:
    return _alloc.ctypes.addressof(_alloc.ctypes.c_char.from_buffer(m))


def test_small_and_disabled_come_from_np_empty(forced, monkeypatch):
    assert _mapping(_alloc.empty((MIB // 8 - 1,), np.float64)) is None  # below the threshold
    assert _mapping(_alloc.empty((0,), np.float32)) is None
    assert _alloc.empty((), np.float32).shape == ()
    monkeypatch.setattr(_alloc, "ENABLED", False)
    assert _mapping(_alloc.empty((4 * MIB,), np.float32)) is None


@pytest.mark.parametrize("cache_bytes", [0, 64 * MIB])
def test_mapping_lives_until_the_last_view(forced, monkeypatch, cache_bytes):
    """A view keeps the mapping; when the last one dies the mapping goes to the cache,
    or (cache off) is unmapped."""
    monkeypatch.setattr(_alloc, "CACHE_BYTES", cache_bytes)
    a = _alloc.empty((4 * MIB,), np.float32)
    m = _mapping(a)
    ref = weakref.ref(m)
    del m
    view = a[10:20]
    del a
    gc.collect()
    assert ref() is not None and ref() not in _alloc._cache  # a view keeps it alive
    view[...] = 1
    del view
    gc.collect()
    if cache_bytes:
        assert _alloc._cache == [ref()]  # the last one hands it to the cache
        _alloc._cache.clear()
        gc.collect()
    assert ref() is None  # unmapped once nothing holds it


def test_cache_gives_a_freed_mapping_back(forced, monkeypatch):
    """The next output of about a freed one's size gets its mapping (aligned, writable,
    its pages already there); a larger or much smaller one does not; the cache keeps at
    most CACHE_ENTRIES mappings and CACHE_BYTES bytes."""
    a = _alloc.empty((4096, 1024), np.float32)  # 16 MiB
    address = a.ctypes.data
    a[...] = 3
    del a
    gc.collect()
    b = _alloc.empty((16 * MIB,), np.uint8)  # the same size, another shape and dtype
    assert b.ctypes.data == address and b.ctypes.data % _alloc.HUGE_PAGE == 0
    assert _alloc._cache == []
    b[...] = 1
    assert b.all()
    del b
    gc.collect()
    c = _alloc.empty((64 * MIB,), np.uint8)  # larger: a new mapping
    d = _alloc.empty((MIB,), np.uint8)  # under half its size: a new one too (keeps the 16 MiB)
    assert c.ctypes.data != address and d.ctypes.data != address
    assert len(_alloc._cache) == 1
    del c, d
    gc.collect()
    assert len(_alloc._cache) == _alloc.CACHE_ENTRIES == 2  # the oldest dropped
    monkeypatch.setattr(_alloc, "CACHE_BYTES", 8 * MIB)
    e = _alloc.empty((4 * MIB,), np.uint8)
    del e
    gc.collect()
    assert 0 < sum(len(m) for m in _alloc._cache) <= 8 * MIB


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _alloc.mmap.PAGESIZE


@pytest.mark.skipif(not _alloc.sys.platform.startswith("linux"), reason="RSS from /proc")
def test_no_growth_over_many_calls(forced):
    x = np.random.default_rng(0).standard_normal((64, 65536), dtype=np.float32)  # 16 MiB out per call
    for _ in range(3):
        twopass.softmax(x)
    before = _rss()
    for _ in range(60):  # 960 MiB of outputs in all: a leak would show by hundreds of MiB
        y = twopass.softmax(x)
        assert _mapping(y) is not None
        del y
    assert _rss() - before < 64 * MIB


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_same_results_with_and_without(forced, monkeypatch, op, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((40, 33000)) * 4).astype(dtype)  # 2.5-10 MiB: above the forced threshold
    x[3, 5] = np.inf
    x[4] = -np.inf
    x[5, 7] = np.nan
    fn = getattr(twopass, op)
    huge = fn(x)
    xt = np.ascontiguousarray(x.T)  # the general path (axis 0)
    huge_t = fn(xt, axis=0)
    if op != "logsumexp" and dtype != np.float16:  # (float16 leaves through a float32 temporary)
        assert _mapping(huge) is not None and _mapping(huge_t) is not None
    monkeypatch.setattr(_alloc, "ENABLED", False)
    np.testing.assert_array_equal(fn(x), huge)  # bit for bit, NaN where NaN
    np.testing.assert_array_equal(fn(xt, axis=0), huge_t)


def test_cross_entropy_gradient_through_it(forced, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 8192)).astype(np.float32)  # a 2 MiB gradient
    t = rng.integers(0, 8192, 64)
    loss, g = twopass.cross_entropy(x, t, return_grad=True)
    assert _mapping(g) is not None
    monkeypatch.setattr(_alloc, "ENABLED", False)
    loss2, g2 = twopass.cross_entropy(x, t, return_grad=True)
    assert loss == loss2
    np.testing.assert_array_equal(g, g2)


def test_cache_size_from_the_environment(monkeypatch):
    for value, want in (("0", 0), ("1.5", 3 * MIB // 2), ("1024", 1024 * MIB)):
        monkeypatch.setenv("TWOPASS_OUTPUT_CACHE_MB", value)
        assert _alloc._cache_bytes() == want
    monkeypatch.delenv("TWOPASS_OUTPUT_CACHE_MB")
    assert _alloc._cache_bytes() == 1024 * MIB
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("TWOPASS_OUTPUT_CACHE_MB", bad)
        with pytest.raises(RuntimeError, match="TWOPASS_OUTPUT_CACHE_MB"):
            _alloc._cache_bytes()
