"""Streaming against normal stores for softmax and log_softmax outputs, the measurement
behind _dispatch.stream_min_bytes and _arrays.streaming_stores.

    python tools/streaming_stores.py [--shapes 1024x4096,4194304] [--threads 1,2] [--dtype float16]

For each shape (float32 unless --dtype): into `out=` (a buffer the caller keeps), hot (the same x and y
every call) and cold (buffer sets cycled beyond 2x the L3), and the plain call (a fresh
output every call), each with the stores forced normal and forced streaming (compute's
`stream`). Prints ms (medians of repeats; the min over 2 alternating rounds) and
streaming / normal: below 1, streaming is faster.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ml_dtypes
import numpy as np

from twopass import _dispatch
from twopass._softmax import compute

SHAPES = "256x4096,512x4096,1024x4096,2048x4096,4096x4096,1048576,2097152,4194304,8388608,16777216"


def timed(fn, sets: list[tuple], reps: int) -> float:
    warm = max(len(sets), 2)
    ts = []
    for r in range(reps + warm):
        args = sets[r % len(sets)]
        t = time.perf_counter()
        fn(*args)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts[warm:]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--dtype", default="float32", help="float32, float64, float16 or bfloat16")
    a = ap.parse_args()
    l3 = _dispatch.cache_sizes()["L3"]
    dtype = np.dtype(a.dtype) if a.dtype != "bfloat16" else np.dtype(ml_dtypes.bfloat16)
    print(f"caches {_dispatch.cache_sizes()}, stream_min_bytes {_dispatch.stream_min_bytes() >> 20} MiB")
    rng = np.random.default_rng(0)
    for threads in (int(t) for t in a.threads.split(",")):
        for text in a.shapes.split(","):
            x0 = rng.standard_normal(tuple(int(v) for v in text.split("x")), dtype=np.float32).astype(dtype)
            cycled = max(3, int(2.2 * l3 // (2 * x0.nbytes)) + 1)
            cases = {
                "out= hot": [(x0.copy(), np.empty_like(x0))],
                "out= cold": [(x0.copy(), np.empty_like(x0)) for _ in range(cycled)],
                "fresh cold": [(x0.copy(),) for _ in range(cycled)],
            }
            cells = []
            for name, sets in cases.items():
                for op in ("softmax", "log_softmax"):
                    t = {False: [], True: []}
                    for stream in (False, True, False, True):
                        opts = {"axis": -1, "threads": threads, "stream": stream}
                        fn = lambda x, y=None, o=op, k=opts: compute(o, x, out=y, **k)  # noqa: E731
                        t[stream].append(timed(fn, sets, a.repeats))
                    normal, streamed = min(t[False]), min(t[True])
                    cells.append(f"{name} {op[:4]} {normal:7.3f}/{streamed:7.3f}={streamed / normal:4.2f}")
                del sets
            print(f"t={threads} y {x0.nbytes >> 20:4d} MiB {text:>10}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
