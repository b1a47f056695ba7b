"""float16 / bfloat16 against float32, and against torch on the same dtype (issue 13).

For each shape, op and thread count: twopass float32, float16 and bfloat16, and torch's
CPU kernels on the same dtype (out= variants, so neither side allocates), cold and hot.
Cold: the call cycles through enough (x, y) sets that more than 2x the L3 (960 MiB on
the 480 MiB machine this was written on) is touched before a set is used again; hot:
one set, reused. Each figure is the median of `--repeats` timed calls (after one warm
call); the machine is shared, so run it on a quiet one or compare ratios.

    python tools/bench_halves.py [--threads 1 2] [--repeats 7] [--json out.json]

Prints ms per call, and the issue's bars: half <= 0.6x float32 cold, half within 1.2x
of float32 hot, twopass >= 1.5x faster than torch on the same dtype.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import ml_dtypes
import numpy as np
import torch

import twopass
from twopass import _dispatch

SHAPES = {"4096x4096": (4096, 4096), "32x128256": (32, 128256), "1x2^24": (1, 1 << 24)}
OPS = ("softmax", "log_softmax", "logsumexp")
DTYPES = {
    "f32": (np.float32, torch.float32),
    "f16": (np.float16, torch.float16),
    "bf16": (ml_dtypes.bfloat16, torch.bfloat16),
}


def buffer_sets(shape: tuple[int, int], np_dtype, cold: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x, y, lse) sets: one (hot) or enough to touch > 2x the L3 between uses (cold)."""
    itemsize = np.dtype(np_dtype).itemsize
    per_set = 2 * math.prod(shape) * itemsize
    count = 1 if not cold else math.ceil(2 * _dispatch.cache_sizes()["L3"] / per_set) + 1
    rng = np.random.default_rng(0)
    base = (rng.standard_normal(shape, dtype=np.float32) * 4).astype(np_dtype)
    sets = [(base.copy(), np.empty_like(base), np.empty(shape[0], np_dtype)) for _ in range(count)]
    for _, y, lse in sets:  # fault the outputs' pages in now, not in the first timed calls
        y.view(np.uint8).fill(0)
        lse.view(np.uint8).fill(0)
    return sets


def as_torch(a: np.ndarray, tdtype) -> torch.Tensor:
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def timed(fn, sets, repeats: int) -> tuple[float, float]:
    fn(*sets[0])  # warm: page faults, first-call costs
    times, k = [], 0
    for _ in range(repeats):
        s = sets[k % len(sets)]
        k += 1
        t0 = time.perf_counter()
        fn(*s)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3  # ms: median, and best (for a noisy machine)


def twopass_call(op: str, threads: int):
    if op == "logsumexp":
        return lambda x, y, lse: twopass.logsumexp(x, out=lse, threads=threads)
    f = getattr(twopass, op)
    return lambda x, y, lse: f(x, out=y, threads=threads)


def torch_call(op: str, tdtype):
    if op == "softmax":
        return lambda x, y, lse: torch._softmax(x, -1, False, out=y)
    if op == "log_softmax":
        return lambda x, y, lse: torch._log_softmax(x, -1, False, out=y)
    return lambda x, y, lse: torch.logsumexp(x, -1, out=lse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--ops", nargs="+", default=list(OPS))
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"isa {_dispatch.ISA}, L3 {_dispatch.cache_sizes()['L3'] >> 20} MiB, torch {torch.__version__}")
    print(
        f"{'shape':>10} {'op':>11} {'t':>2} {'mode':>4} | "
        + " ".join(f"{'tp ' + d + ' med (min)':>16}" for d in DTYPES)
        + " | "
        + " ".join(f"{'torch ' + d + ' med (min)':>16}" for d in DTYPES)
    )
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        for mode in ("cold", "hot"):
            res: dict[tuple[str, int], dict] = {}
            for d, (npd, tdt) in DTYPES.items():  # one dtype's buffers at a time (~1 GiB cold)
                sets = buffer_sets(shape, npd, mode == "cold")
                tsets = [tuple(as_torch(a, tdt) for a in s) for s in sets]
                for op in args.ops:
                    for t in args.threads:
                        torch.set_num_threads(t)
                        r = res.setdefault((op, t), {"shape": shape_name, "op": op, "threads": t, "mode": mode})
                        r[f"twopass_{d}"], r[f"twopass_{d}_min"] = timed(twopass_call(op, t), sets, args.repeats)
                        r[f"torch_{d}"], r[f"torch_{d}_min"] = timed(torch_call(op, tdt), tsets, args.repeats)
                del sets, tsets
            for r in res.values():
                rows.append(r)
                print(
                    f"{shape_name:>10} {r['op']:>11} {r['threads']:>2} {mode:>4} | "
                    + " ".join(f"{r['twopass_' + d]:7.2f} ({r['twopass_' + d + '_min']:6.2f})" for d in DTYPES)
                    + " | "
                    + " ".join(f"{r['torch_' + d]:7.2f} ({r['torch_' + d + '_min']:6.2f})" for d in DTYPES),
                    flush=True,
                )
    print("\nbars (half / float32 cold <= 0.6; hot <= 1.2; torch / twopass same dtype >= 1.5), medians [best]:")
    for r in rows:
        for d in ("f16", "bf16"):
            bar = 0.6 if r["mode"] == "cold" else 1.2
            ratio, ratio_b = (r[f"twopass_{d}{k}"] / r[f"twopass_f32{k}"] for k in ("", "_min"))
            speedup, speedup_b = (r[f"torch_{d}{k}"] / r[f"twopass_{d}{k}"] for k in ("", "_min"))
            print(
                f"{r['shape']:>10} {r['op']:>11} {r['threads']} {r['mode']:>4} {d:>4}: "
                f"vs f32 {ratio:5.2f} [{ratio_b:5.2f}] ({'met' if ratio <= bar else 'MISSED'}), "
                f"vs torch {speedup:6.2f}x [{speedup_b:6.2f}x] ({'met' if speedup >= 1.5 else 'MISSED'})"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
