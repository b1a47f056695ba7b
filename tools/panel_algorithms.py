"""softmax over a non-last axis: each algorithm and auto, hot and cold, 1 and 2 threads.

The panels' rule of algorithm="auto" (src/twopass/_softmax.py, _panel_algorithm) was set
from this table. Per shape and thread count, milliseconds (medians, the algorithms
alternating call by call so they see the same machine load): three_pass_reload,
three_pass_recompute, two_pass and auto, then auto and the recompute over the faster of
the reload and two_pass. "cold" cycles copies of x and y until more than twice the L3
lies between two uses of one.

    python tools/panel_algorithms.py --dtypes float64 --shapes 1024x4096@0 32768x256@0
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np

import twopass
from twopass import _dispatch

ALGORITHMS = ["three_pass_reload", "three_pass_recompute", "two_pass", "auto"]
SHAPES = ["512x4096@0", "1024x4096@0", "2048x2048@0", "8192x1024@0", "32768x256@0", "65536x64@0", "262144x8@0"]


def parse_shape(text: str) -> tuple[tuple[int, ...], int]:
    dims, _, axis = text.partition("@")
    return tuple(int(d) for d in dims.split("x")), int(axis or 0)


def times(xs: list[np.ndarray], ys: list[np.ndarray], axis: int, threads: int, repeats: int) -> np.ndarray:
    """Median ms per algorithm, cycling through the copies (one copy: hot)."""
    t = np.zeros((repeats, len(ALGORITHMS)))
    k = 0
    for r in range(repeats):
        for i, algorithm in enumerate(ALGORITHMS):
            j = k % len(xs)
            k += 1
            t0 = time.perf_counter()
            twopass.softmax(xs[j], axis=axis, out=ys[j], threads=threads, algorithm=algorithm)
            t[r, i] = time.perf_counter() - t0
    return np.median(t, axis=0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="e.g. 1024x4096@0 (axis 0)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    l3 = _dispatch.cache_sizes()["L3"]
    rng = np.random.default_rng(0)
    print("dtype shape threads regime: reload recompute two_pass auto ms | auto, recompute / min(reload, two_pass)")
    for name in args.dtypes:
        dtype = ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
        for text in args.shapes:
            shape, axis = parse_shape(text)
            x = rng.standard_normal(shape).astype(dtype)
            copies = int(np.ceil(2 * l3 / (2 * x.nbytes))) + 1
            xs = [x.copy() for _ in range(copies)]
            ys = [np.empty_like(x) for _ in range(copies)]
            for threads in args.threads:
                for regime, n in (("hot", 1), ("cold", copies)):
                    m = times(xs[:n], ys[:n], axis, threads, args.repeats)
                    best = min(m[0], m[2])
                    print(
                        f"{name} {text} {threads} {regime}: " + " ".join(f"{v:.2f}" for v in m),
                        f"| {m[3] / best:.2f} {m[1] / best:.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
