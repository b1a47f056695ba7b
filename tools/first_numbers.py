"""The "first numbers" of issue 2: one float32 row of 2^24 elements, one thread.

Times each softmax algorithm, logsumexp (one pass) and the max-then-sum logsumexp, and
the bandwidth probes over the same buffers: a read pass and a copy pass. The bound of a
two-pass softmax (2 reads + 1 write) is read + copy. Medians of --repeats runs.

    python tools/first_numbers.py [--isa avx2] [--threads 1] [--repeats 15] [--n 16777216]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import twopass
from twopass import _core, _dispatch
from twopass._api import compute


def median_ms(f, repeats: int) -> float:
    f()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--isa", default=_dispatch.ISA)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--n", type=int, default=1 << 24)
    a = p.parse_args()
    isa_code = _dispatch.isa_code(a.isa)
    x = np.random.default_rng(0).standard_normal(a.n).astype(np.float32)
    y = np.empty_like(x)
    read = median_ms(lambda: _core.read_pass(x, isa_code, a.threads), a.repeats)
    copy = median_ms(lambda: _core.copy_pass(x, y, isa_code, a.threads, False), a.repeats)
    copy_nt = median_ms(lambda: _core.copy_pass(x, y, isa_code, a.threads, True), a.repeats)
    bound = read + min(copy, copy_nt)
    mb = x.nbytes / 1e6
    print(f"float32 row of {a.n} elements ({mb:.0f} MB), isa={a.isa}, threads={a.threads}, medians of {a.repeats}")
    print(f"CPU: {_dispatch.info()['cpu']}\n")
    print("| what | time (ms) | GB/s moved | / bound |")
    print("|---|---:|---:|---:|")
    print(f"| read pass (1R) | {read:.2f} | {mb / read:.1f} | |")
    print(f"| copy pass (1R+1W) | {copy:.2f} | {2 * mb / copy:.1f} | |")
    print(f"| copy, streaming stores | {copy_nt:.2f} | {2 * mb / copy_nt:.1f} | |")
    print(f"| **bound: read + copy (2R+1W)** | {bound:.2f} | {3 * mb / bound:.1f} | 1.00 |")
    traffic = {"two_pass": 3, "three_pass_reload": 5, "three_pass_recompute": 4, "online": 3}
    times = {}
    for algo in twopass.ALGORITHMS:
        times[algo] = median_ms(
            lambda algo=algo: compute("softmax", x, out=y, algorithm=algo, threads=a.threads, isa=a.isa), a.repeats
        )
        t = times[algo]
        print(f"| softmax {algo} | {t:.2f} | {traffic[algo] * mb / t:.1f} | {t / bound:.2f} |")
    lse = median_ms(lambda: compute("logsumexp", x, algorithm="two_pass", threads=a.threads, isa=a.isa), a.repeats)
    lse3 = median_ms(
        lambda: compute("logsumexp", x, algorithm="three_pass_recompute", threads=a.threads, isa=a.isa), a.repeats
    )
    print(f"| logsumexp two_pass (1R) | {lse:.2f} | {mb / lse:.1f} | {lse / read:.2f} x read |")
    print(f"| logsumexp max-then-sum (2R) | {lse3:.2f} | {2 * mb / lse3:.1f} | {lse3 / read:.2f} x read |")
    print()
    print(f"two_pass / three_pass_reload = {times['two_pass'] / times['three_pass_reload']:.2f}")
    print(f"two_pass / bound = {times['two_pass'] / bound:.2f}")


if __name__ == "__main__":
    main()
