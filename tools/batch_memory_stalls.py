"""How much of a batch's two_pass time is waiting on memory: the batch cold (buffer sets
cycled beyond 2x the L3) against the same rows run from the L2 (a few rows, repeated to
the batch's size), for softmax and log_softmax.

    python tools/batch_memory_stalls.py [--shapes 4096x4096,32x128256] [--threads 1] [--dtype float32]

Prints ms per call (medians of repeats, the min over 2 alternating rounds), cold / in-L2,
and ns per row in the L2. A ratio well above 1 says the passes do not overlap their loads
with their arithmetic (the roofline tables of the README).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import twopass
from twopass import _dispatch


def median_ms(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def cycled(fn, sets: list[np.ndarray], outs: list[np.ndarray], threads: int):
    """One call per call of the result, on the next buffer set (cold)."""
    turn = [0]

    def call() -> None:
        k = turn[0] % len(sets)
        turn[0] += 1
        fn(sets[k], out=outs[k], algorithm="two_pass", threads=threads)

    return call


def repeated(fn, x: np.ndarray, out: np.ndarray, times: int, threads: int):
    """`times` calls on the same few rows (in the L2) per call of the result."""

    def call() -> None:
        for _ in range(max(1, times)):
            fn(x, out=out, algorithm="two_pass", threads=threads)

    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4096x4096,32x128256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    dtype = np.dtype(args.dtype)
    l2, l3 = _dispatch.cache_sizes()["L2"], _dispatch.cache_sizes()["L3"]
    rng = np.random.default_rng(0)
    for spec in args.shapes.split(","):
        rows, n = (int(v) for v in spec.split("x"))
        nbytes = rows * n * dtype.itemsize
        nsets = max(1, -(-2 * l3 // (2 * nbytes)))  # x + y of the sets beyond 2x the L3
        sets = [rng.standard_normal((rows, n)).astype(dtype) for _ in range(nsets)]
        outs = [np.empty_like(s) for s in sets]
        few = max(1, l2 // 4 // (n * dtype.itemsize))  # rows whose x and y fit half the L2
        small, small_out = sets[0][:few].copy(), np.empty((few, n), dtype)
        for op in ("softmax", "log_softmax"):
            fn = getattr(twopass, op)
            c = min(median_ms(cycled(fn, sets, outs, args.threads), args.repeats) for _ in range(2))
            h = min(
                median_ms(repeated(fn, small, small_out, rows // few, args.threads), args.repeats) for _ in range(2)
            )
            print(
                f"{args.dtype} {spec} {op} {args.threads}t: cold {c:.2f} ms, in L2 {h:.2f} ms, "
                f"cold / in L2 {c / h:.2f}, {h / rows * 1e6:.0f} ns per row in L2"
            )


if __name__ == "__main__":
    main()
