"""Small batches on 1 and 2 threads: what a multi-threaded call costs on top of its work.

    python tools/small_batches_threads.py [--repeats 7] [--gap-ms 0]

float32 softmax into a reused output (hot), per shape: the best of --repeats timeit
rounds on 1 thread and on 2, in microseconds. Shapes from 64K elements, where the
batch is split by rows, to a single row of 128K, which is split along its axis.
--gap-ms > 0 sleeps that long before each call instead (the worker threads fall
asleep, and both virtual CPUs of a small VM may halt): medians of single calls.
TWOPASS_SPIN_US sets how long the pool's workers wait for the next call.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

import numpy as np

import twopass

SHAPES = [(64, 1024), (256, 1024), (1024, 1024), (1, 1 << 17)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--gap-ms", type=float, default=0.0)
    args = ap.parse_args()
    print(f"spin {twopass.info()['spin_us']} us; float32 softmax, out= reused; us")
    for shape in SHAPES:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        y = np.empty_like(x)
        times = []
        for threads in (1, 2):

            def call(x=x, y=y, threads=threads):
                twopass.softmax(x, out=y, threads=threads)

            if args.gap_ms > 0:
                samples = []
                for _ in range(20 * args.repeats):
                    time.sleep(args.gap_ms / 1e3)
                    t0 = time.perf_counter()
                    call()
                    samples.append(time.perf_counter() - t0)
                times.append(statistics.median(samples) * 1e6)
            else:
                k = max(20, 4_000_000 // x.size)
                times.append(min(timeit.repeat(call, number=k, repeat=args.repeats)) / k * 1e6)
        print(f"{'x'.join(map(str, shape)):>10}  1 thread {times[0]:8.1f}  2 threads {times[1]:8.1f}")


if __name__ == "__main__":
    main()
