"""What a fresh output costs: first touch on 4 KiB and 2 MiB pages, and softmax's plain
call against out= (a fresh np.empty, a reused buffer).

    python tools/fresh_outputs.py [--threads 1,2] [--repeats 7] [--cold] [--dtypes float32]

Part 1, first touch: a fresh buffer of each size written once by np.copyto (one thread),
from np.empty (4 KiB pages: THP is `madvise` here) and from _alloc.empty forced on (2 MiB
pages); the same copy into a reused buffer is the baseline. Part 2: softmax over the
benchmark's shapes: the plain call (its output from _alloc.empty, whose cache gives back
the pages of the output before last), the same with the cache emptied first (fresh
pages every call), the plain call with _alloc off (np.empty: what it was before), out= a
fresh np.empty, out= a reused buffer.
Variants are interleaved repeat by repeat (a loaded machine slows them alike); medians.
--cold cycles the inputs (and the reused outputs) over more than 2x the L3 so that every
call reads x from memory.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

import twopass
from twopass import _alloc, _dispatch

SHAPES = ((4096, 4096), (32, 128256), (1 << 24,))
SIZES_MIB = (1, 2, 4, 8, 16, 64, 256)


def huge_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """_alloc.empty with its threshold and THP-mode check out of the way, and its cache
    emptied first: a fresh mapping."""
    saved = _alloc.ENABLED, _alloc.HUGE_THRESHOLD
    _alloc.ENABLED, _alloc.HUGE_THRESHOLD = True, 0
    _alloc._cache.clear()
    try:
        return _alloc.empty(shape, dtype)
    finally:
        _alloc.ENABLED, _alloc.HUGE_THRESHOLD = saved


def plain_4k(x: np.ndarray, t: int) -> np.ndarray:
    """The plain call as before _alloc: its output from np.empty."""
    saved = _alloc.ENABLED
    _alloc.ENABLED = False
    try:
        return twopass.softmax(x, threads=t)
    finally:
        _alloc.ENABLED = saved


def interleaved(variants: dict[str, callable], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    for f in variants.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _touch_variants(n: int) -> dict[str, callable]:
    x = np.ones(n, np.float32)
    y = np.ones(n, np.float32)
    return {
        "reused": lambda: np.copyto(y, x),
        "4k": lambda: np.copyto(np.empty(n, np.float32), x),
        "2m": lambda: np.copyto(huge_empty((n,), np.float32), x),
    }


def _softmax_variants(xs: list[np.ndarray], ys: list[np.ndarray], t: int) -> dict[str, callable]:
    """The four calls, each on the next input set (cold: cycled)."""
    k = [0]

    def nxt() -> int:
        k[0] = (k[0] + 1) % len(xs)
        return k[0]

    def reused() -> np.ndarray:
        i = nxt()
        return twopass.softmax(xs[i], out=ys[i], threads=t)

    return {
        "plain": lambda: twopass.softmax(xs[nxt()], threads=t),
        "uncached": lambda: (_alloc._cache.clear(), twopass.softmax(xs[nxt()], threads=t))[1],
        "np": lambda: twopass.softmax(xs[nxt()], out=np.empty(xs[0].shape, xs[0].dtype), threads=t),
        "4k": lambda: plain_4k(xs[nxt()], t),
        "reused": reused,
    }


def first_touch(repeats: int) -> None:
    print("first touch: np.copyto into a fresh buffer, 1 thread (ms; extra = fresh - reused, per MiB)")
    print(f"{'MiB':>5} {'reused':>8} {'4K fresh':>9} {'2M fresh':>9} {'4K extra/MiB':>13} {'2M extra/MiB':>13}")
    for mib in SIZES_MIB:
        n = mib << 18  # float32 elements
        r = interleaved(_touch_variants(n), repeats)
        e4, e2 = (r["4k"] - r["reused"]) / mib, (r["2m"] - r["reused"]) / mib
        print(
            f"{mib:>5} {r['reused'] * 1e3:>8.3f} {r['4k'] * 1e3:>9.3f} {r['2m'] * 1e3:>9.3f} "
            f"{e4 * 1e3:>13.4f} {e2 * 1e3:>13.4f}"
        )


def softmax_outputs(threads: list[int], repeats: int, cold: bool, dtypes: list[str]) -> None:
    l3 = _dispatch.cache_sizes()["L3"]
    print(f"\nsoftmax (ms, medians of {repeats}; {'cold: x cycled over > 2x L3' if cold else 'hot x'})")
    print(
        f"{'dtype':>8} {'shape':>10} {'t':>2} {'plain':>8} {'uncached':>9} {'out=np.empty':>13} {'plain 4K':>11} "
        f"{'out=reused':>11} {'plain/reused':>13} {'np.empty/plain':>15}"
    )
    for dtype in dtypes:
        dt = np.dtype(dtype)
        for shape in SHAPES:
            x0 = np.random.default_rng(0).standard_normal(shape, dtype=np.float32).astype(dt)
            nsets = max(1, math.ceil(2 * l3 / (2 * x0.nbytes))) if cold else 1
            xs = [x0] + [x0.copy() for _ in range(nsets - 1)]
            ys = [np.zeros_like(x0) for _ in range(nsets)]
            for t in threads:
                r = interleaved(_softmax_variants(xs, ys, t), repeats)
                print(
                    f"{dtype:>8} {'x'.join(map(str, shape)):>10} {t:>2} {r['plain'] * 1e3:>8.2f} "
                    f"{r['uncached'] * 1e3:>9.2f} {r['np'] * 1e3:>13.2f} {r['4k'] * 1e3:>11.2f} "
                    f"{r['reused'] * 1e3:>11.2f} "
                    f"{r['plain'] / r['reused']:>13.2f} {r['np'] / r['plain']:>15.2f}"
                )
            del xs, ys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cold", action="store_true")
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--skip-first-touch", action="store_true")
    a = p.parse_args()
    print(f"THP mode: {_alloc.THP_MODE or 'none'}; _alloc enabled: {_alloc.ENABLED}, threshold {_alloc.HUGE_THRESHOLD}")
    if not a.skip_first_touch:
        first_touch(a.repeats)
    softmax_outputs([int(t) for t in a.threads.split(",")], a.repeats, a.cold, a.dtypes.split(","))


if __name__ == "__main__":
    main()
