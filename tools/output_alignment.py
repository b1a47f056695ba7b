"""How the alignment of x and y moves a call's time: `out=` given, cold.

NumPy's large arrays (malloc'd, a mapping of their own) start 16 bytes past a page, so
`twopass.softmax(x, out=y)` with both from `np.empty` reads and writes rows that start
16 bytes past a 64-byte line. This times the op (algorithm "auto" unless named) with x
and y each 64-byte aligned (A) or 16 bytes past (M), 1 and 2 threads, medians of 13
calls; the four combinations alternate call by call over enough buffer sets that each
call reads its x from memory (sets cycled beyond 2x a 32 MiB L3 for the large shapes).

    python tools/output_alignment.py 4096x4096 softmax [float32] [algorithm]

Prints ms per call: xAyA xAyM xMyA xMyM (xMyM: what two np.empty arrays give).
"""

from __future__ import annotations

import statistics
import sys
import time

import ml_dtypes
import numpy as np

import twopass

DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def buffer(shape: tuple[int, ...], dtype: np.dtype, offset: int, rng: np.random.Generator | None) -> np.ndarray:
    """An array `offset` bytes past a page boundary; filled from rng, or zeroed (touched)."""
    count = int(np.prod(shape))
    raw = np.empty(count * dtype.itemsize + 4096, np.uint8)
    start = -raw.ctypes.data % 4096 + offset
    a = raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)
    a[...] = (rng.standard_normal(shape) * 3).astype(dtype) if rng is not None else 0
    return a


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    shape = tuple(int(s) for s in argv[0].split("x"))
    op = getattr(twopass, argv[1])
    dtype = np.dtype(DTYPES[argv[2] if len(argv) > 2 else "float32"])
    algorithm = argv[3] if len(argv) > 3 else "auto"
    rng = np.random.default_rng(0)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    sets = 3 if nbytes >= 32 << 20 else max(3, -(-(2 * 64 << 20) // (2 * nbytes)))
    x = {k: [buffer(shape, dtype, off, rng) for _ in range(sets)] for k, off in (("xA", 0), ("xM", 16))}
    y = {k: [buffer(shape, dtype, off, None) for _ in range(sets)] for k, off in (("yA", 0), ("yM", 16))}
    line = []
    for threads in (1, 2):
        times: dict[str, list[float]] = {}
        for rep in range(15):
            for xk, xs in x.items():
                for yk, ys in y.items():
                    xi, yi = xs[rep % sets], ys[rep % sets]
                    t0 = time.perf_counter()
                    op(xi, axis=-1, out=yi, threads=threads, algorithm=algorithm)
                    times.setdefault(xk + yk, []).append(time.perf_counter() - t0)
        line.append(f"{threads}t " + " ".join(f"{k} {statistics.median(v[2:]) * 1e3:.3f}" for k, v in times.items()))
    print(" ".join(argv), "|", " | ".join(line))


if __name__ == "__main__":
    main(sys.argv[1:])
