"""Developer timing of single rows: ns per element for each algorithm, in cache and out.

python tools/quick_timing.py [isa]   (the real benchmark is `python -m twopass bench`)
"""

import sys
import time

import numpy as np

import twopass
from twopass import _core
from twopass._api import compute


def median_time(f, repeats=9):
    f()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


isa = sys.argv[1] if len(sys.argv) > 1 else None
for n in (1 << 14, 1 << 16, 1 << 24):
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y = np.empty_like(x)
    reps = 9 if n < 1 << 20 else 5
    row = []
    for op in ("softmax", "log_softmax", "logsumexp"):
        for algo in twopass.ALGORITHMS:
            t = median_time(lambda: compute(op, x, out=None if op == "logsumexp" else y, algorithm=algo, threads=1, isa=isa), reps)
            row.append(f"{op[:6]}/{algo[:12]}={t / n * 1e9:.2f}")
    print(f"n=2^{n.bit_length() - 1}: ns/elem " + "  ".join(row))
