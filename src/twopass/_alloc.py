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
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import sys
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


def empty(shape: tuple[int, ...] | int, dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array, writable; from `HUGE_THRESHOLD` bytes up (on
    Linux with THP in madvise mode) 2 MiB-aligned in a mapping of its own, marked for
    huge pages. The mapping is unmapped when the array (and every view of it) dies."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if not ENABLED or nbytes < HUGE_THRESHOLD:
        return np.empty(shape, dtype)
    # Room to slide the start to a 2 MiB boundary; the pages before it are never touched
    # and cost no memory.
    length = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    m = mmap.mmap(-1, length + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    offset = -base % HUGE_PAGE
    m.madvise(mmap.MADV_HUGEPAGE, offset, length)
    # np.frombuffer keeps `m` alive (the array's base); the last view's death closes it.
    return np.frombuffer(m, dtype=dtype, count=count, offset=offset).reshape(shape)
