"""Fresh output buffers that fault in on 2 MiB pages.

A new output is memory never touched before: the kernel's first write to each page
faults, and the kernel zeroes the page before handing it over. On 4 KiB pages that is
one fault per 4 KiB, on the critical path of the call (4096x4096 float32: 16384 faults,
~9 ms of a ~23 ms call on the machine of the README). With transparent huge pages, one
fault maps and zeroes 2 MiB: 512x fewer faults, and the zeroing streams. Where THP is in
`madvise` mode (the common default), only ranges marked MADV_HUGEPAGE get them, and only
2 MiB-aligned 2 MiB blocks inside the mapping: `empty` maps its own buffer, aligns the
array to 2 MiB and marks it. The kernels write each block of rows from the thread that
computes it, so the faults (and the zeroing) are spread over the call's threads.

Below `HUGE_THRESHOLD` bytes an output comes from np.empty: malloc recycles such blocks
(already faulted in), and a fresh mapping per call would cost more than the faults it
saves (tools/fresh_outputs.py measures both).

Above it, a mapping whose array has died is kept for the next output of about its size
(the cache: at most `CACHE_ENTRIES` mappings and `CACHE_BYTES` bytes), as malloc keeps
its smaller blocks: a loop that drops each output before its next call gets the same
pages back, already faulted in and zeroed once, instead of paying the first touch again.
`TWOPASS_OUTPUT_CACHE_MB=0` turns the cache off (and sets its size otherwise).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import sys
import weakref
from typing import Any

import numpy as np

HUGE_PAGE = 2 << 20
# Outputs of at least this many bytes get their own huge-page mapping. Below it, glibc's
# malloc serves np.empty from its heap once a block of that size has been freed (its mmap
# threshold adapts up to 32 MiB), so the pages are already faulted in: tools/fresh_outputs.py
# measured no first-touch cost for fresh np.empty buffers up to 8 MiB, and ~0.04 ms/MiB for
# a fresh huge-page mapping. From 32 MiB up, np.empty maps fresh pages on every call.
HUGE_THRESHOLD = 32 << 20


def _thp_mode() -> str:
    """The kernel's THP mode: "always", "madvise" or "never" ("" where there is none)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


THP_MODE = _thp_mode()
# madvise(MADV_HUGEPAGE) does something only in "madvise" mode ("always" gives huge pages
# to every large mapping anyway, np.empty's included; "never" to none).
# TWOPASS_HUGE_PAGES=0 turns it off (every output from np.empty).
ENABLED = (
    sys.platform.startswith("linux")
    and hasattr(mmap, "MADV_HUGEPAGE")
    and THP_MODE == "madvise"
    and os.environ.get("TWOPASS_HUGE_PAGES", "1") != "0"
)


# The cache of freed mappings (see above): most recent last. A finalizer adds to it when
# an array's last view dies (any thread, any moment the collector runs), so it is only
# appended to and popped from, both atomic under the GIL, and never locked. Plain call,
# softmax of 4096x4096 float32, one thread, Zen 4 VM: see the README, "Fresh outputs".
CACHE_ENTRIES = 2


def _cache_bytes() -> int:
    """TWOPASS_OUTPUT_CACHE_MB (default 1024) in bytes; read once, at import."""
    env = os.environ.get("TWOPASS_OUTPUT_CACHE_MB", "1024")
    try:
        mib = float(env)
    except ValueError:
        raise RuntimeError(f"TWOPASS_OUTPUT_CACHE_MB={env!r} is not a number of MiB") from None
    if not 0 <= mib < 1 << 40:
        raise RuntimeError(f"TWOPASS_OUTPUT_CACHE_MB={env!r} must be >= 0 (0: no cache)")
    return int(mib * (1 << 20))


CACHE_BYTES = _cache_bytes()
_cache: list[mmap.mmap] = []
_reused: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()  # handed out again, from the cache


def _release(m: mmap.mmap) -> None:
    """The array on m has died: keep m for the next output (the oldest beyond the cache's
    limits is dropped, and unmapped once nothing references it)."""
    if len(m) > CACHE_BYTES:
        return
    _cache.append(m)
    while len(_cache) > CACHE_ENTRIES or sum(len(c) for c in list(_cache)) > CACHE_BYTES:
        try:
            _cache.pop(0)
        except IndexError:
            break


def _take(length: int) -> mmap.mmap | None:
    """A cached mapping with room for `length` bytes at a 2 MiB boundary and at most twice
    that (a larger one stays for a larger output), or None."""
    for m in reversed(list(_cache)):
        if length + HUGE_PAGE <= len(m) <= 2 * (length + HUGE_PAGE):
            try:
                _cache.remove(m)
            except ValueError:  # (taken meanwhile, by another thread)
                continue
            return m
    return None


def empty(shape: tuple[int, ...] | int, dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array, writable; from `HUGE_THRESHOLD` bytes up (on
    Linux with THP in madvise mode) 2 MiB-aligned in a mapping of its own, marked for
    huge pages, or one of the cache's. When the array (and every view of it) dies, the
    mapping goes to the cache, or is unmapped."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if not ENABLED or nbytes < HUGE_THRESHOLD:
        return np.empty(shape, dtype)
    # Room to slide the start to a 2 MiB boundary; the pages before it are never touched
    # and cost no memory.
    length = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    m = _take(length)
    if m is None:
        m = mmap.mmap(-1, length + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        _reused.add(m)
    # The array's base: a ctypes view of the whole mapping, whose death (the last view's)
    # hands the mapping to the cache; it keeps the mapping alive until then.
    view = (ctypes.c_char * len(m)).from_buffer(m)
    offset = -ctypes.addressof(view) % HUGE_PAGE
    m.madvise(mmap.MADV_HUGEPAGE, offset, len(m) - offset)
    weakref.finalize(view, _release, m).atexit = False
    return np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)


def reused(a: np.ndarray) -> bool:
    """a (from `empty`) lies in pages an earlier output faulted in (the cache's), not in
    fresh ones: the kernels' stores then find no zeroed lines in the cache, and streaming
    stores pay (_arrays.streaming_stores)."""
    return a.nbytes >= HUGE_THRESHOLD and mapping(a) in _reused


def mapping(a: np.ndarray) -> mmap.mmap | None:
    """The mapping behind an array from `empty` (None: from np.empty)."""
    base: Any = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, ctypes.Array):  # from_buffer keeps a memoryview of the mapping
        sources = getattr(base, "_objects", None) or {}
        base = next((v.obj for v in sources.values() if isinstance(v, memoryview)), None)
    return base if isinstance(base, mmap.mmap) else None
