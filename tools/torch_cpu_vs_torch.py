"""twopass.torch against the torch op it replaces, on CPU tensors: time ratios.

For each op (softmax, log_softmax, logsumexp, cross_entropy), shape, mode and thread
count it prints twopass.torch's median time over torch's (< 1: twopass is faster):

- fwd: the forward without autograd (x.requires_grad False), output allocation included;
- bwd: torch.autograd.grad through a graph built once (retain_graph), i.e. the backward
  alone (for cross_entropy twopass's backward is nearly free: the forward computed it);
- fwdbwd: the forward with x requiring grad, then the backward.

Timing: the two sides alternate call by call (so drift on a shared machine hits both),
medians of --repeats calls after warm-up. Hot: the same buffers each call. Cold (shapes
whose buffers exceed the L2): the inputs cycle through enough sets that more than
2x the L3 is touched between two uses of a set, so every call reads from memory.

    python tools/torch_cpu_vs_torch.py                  # the default shapes, 1 and 2 threads
    python tools/torch_cpu_vs_torch.py --shapes 1x1024 4096x4096 --threads 1 --ops softmax
    python tools/torch_cpu_vs_torch.py --json out.json
    python tools/torch_cpu_vs_torch.py --dtype bfloat16 --threads 1   # the halves too
    python tools/torch_cpu_vs_torch.py --shapes 16x4x65536@1 --ops softmax   # over dim 1

A shape's "@d" suffix normalises over dim d (default: the last); PANELS are such shapes
(`--shapes panels`), for softmax, log_softmax and logsumexp.

--masked VALUE gives the inputs a causal mask, as attention scores carry: along the
normalised dim (n entries), slice i of the dims before it keeps its first 1 + (i mod n)
entries, the rest are VALUE (-inf, -1e4, lowest: the float's most negative finite; a
cross_entropy target always falls on a kept entry).

    python tools/torch_cpu_vs_torch.py --masked=-inf --shapes 2048x2048 256x4096 --ops softmax
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

import twopass
import twopass.torch as tpt

SMALL = ["1x1024", "256x1024", "64x4096", "8x32000"]
BATCHES = ["4096x4096", "32x128256", "64x262144", "65536x64"]
ROWS = ["1x4096", "1x262144", "1x16777216"]  # the benchmark's quick row sweep
# Non-last dims: short (4, 16) and long (64, 4096) axes over wide panels of columns, and
# panels narrower than a vector (8 and 4 columns).
PANELS = ["16x4x65536@1", "64x65536@0", "256x16x1024@1", "8x64x8192@1", "4096x4096@0", "4096x8@0", "65536x4@0"]
OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy")
MODES = ("fwd", "bwd", "fwdbwd")


def _ops(d=-1):
    return {
        "softmax": (lambda x, t: tpt.softmax(x, d), lambda x, t: torch.softmax(x, d)),
        "log_softmax": (lambda x, t: tpt.log_softmax(x, d), lambda x, t: torch.log_softmax(x, d)),
        "logsumexp": (lambda x, t: tpt.logsumexp(x, d), lambda x, t: torch.logsumexp(x, d)),
        "cross_entropy": (lambda x, t: tpt.cross_entropy(x, t), lambda x, t: F.cross_entropy(x, t)),
    }


def causal_mask(shape, dim, value, dtype):
    """x of `shape` with a causal mask along `dim` (see --masked), the masked entries
    `value` (a float, or "lowest")."""
    dim %= len(shape)
    outer, n = math.prod(shape[:dim]), shape[dim]
    keep = torch.arange(n).view(1, n, 1) <= torch.arange(outer).remainder(n).view(outer, 1, 1)
    keep = keep.expand(outer, n, math.prod(shape[dim + 1 :])).reshape(shape)
    x = torch.randn(shape, dtype=dtype) * 3
    return x.masked_fill(~keep, torch.finfo(dtype).min if value == "lowest" else float(value))


def _inputs(shape, dtype, nsets, op, dim=-1, masked=None):
    sets = []
    for _ in range(nsets):
        x = torch.randn(shape, dtype=dtype) * 3 if masked is None else causal_mask(shape, dim, masked, dtype)
        t = None
        if op == "cross_entropy":  # (over dim -1) a kept class: up to the row's last kept one
            rows = math.prod(shape[:-1])
            kept = torch.arange(rows).remainder(shape[-1]) + 1 if masked is not None else shape[-1]
            t = (torch.rand(rows) * kept).long().reshape(shape[:-1])
        sets.append((x, t))
    return sets


def _grad_like(y):
    return torch.randn_like(y) if y.dim() else torch.ones_like(y)


def measure(op, shape, dtype, mode, threads, cold, repeats, dim=-1, masked=None):
    """(median twopass seconds, median torch seconds)."""
    torch.set_num_threads(threads)
    fns = _ops(dim)[op]
    nbytes = math.prod(shape) * torch.tensor([], dtype=dtype).element_size()
    l3 = twopass.info()["caches"]["L3"]
    # bytes one call touches (x and y; the backward g, y and gx; both: four arrays), the
    # two sides alternating: enough sets that 2x the L3 passes between two uses of one
    per_call = nbytes * {"fwd": 2, "bwd": 3, "fwdbwd": 4}[mode]
    nsets = max(1, math.ceil(2 * l3 / (2 * per_call)) + 1) if cold else 1
    sets = _inputs(shape, dtype, nsets, op, dim, masked)
    times = ([], [])
    grads = []  # upstream gradients, made once: drawing them would cost more than the op
    if mode == "fwdbwd":
        for x, t in sets:
            y = fns[1](x, t)
            grads.append(_grad_like(y) if y.dim() else None)
    if mode == "bwd":  # one graph per set and side, run backward again and again
        graphs = []
        for side in (0, 1):
            gs = []
            for x, t in sets:
                xg = x.detach().requires_grad_(True)
                y = fns[side](xg, t)
                gs.append((xg, y, _grad_like(y)))
            graphs.append(gs)
        sets = [(None, t) for _, t in sets]  # x lives on in the graphs (as xg)

    def call(side, k):
        x, t = sets[k]
        if mode == "fwd":
            fns[side](x, t)
        elif mode == "bwd":
            xg, y, g = graphs[side][k]
            torch.autograd.grad(y, xg, g, retain_graph=True)
        else:
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(fns[side](xg, t), xg, grads[k])

    warm = 3 if nbytes > (1 << 22) else 20
    for i in range(warm):
        for side in (0, 1):
            call(side, i % nsets)
    k = 0
    for _ in range(repeats):
        for side in (0, 1):
            t0 = time.perf_counter()
            call(side, k)
            times[side].append(time.perf_counter() - t0)
        k = (k + 1) % nsets
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=SMALL + BATCHES + ROWS)
    ap.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16", "float16"))
    ap.add_argument("--repeats", type=int, default=0, help="timed calls per side (default: by size)")
    ap.add_argument("--no-cold", action="store_true", help="hot only")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--masked", metavar="VALUE", help="a causal mask of VALUE (-inf, -1e4, lowest): see above")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    l2 = twopass.info()["caches"]["L2"]
    rows = []
    print(f"{'op':14} {'shape':>14} {'mode':7} {'thr':>3} {'cache':5} {'twopass us':>11} {'torch us':>10} {'ratio':>6}")
    shapes = [s for text in args.shapes for s in (PANELS if text == "panels" else [text])]
    for op in args.ops:
        for text in shapes:
            dims, _, d = text.partition("@")
            dim = int(d) if d else -1
            if dim != -1 and op == "cross_entropy":
                continue  # (its class dim is fixed)
            shape = tuple(int(s) for s in dims.split("x"))
            nbytes = math.prod(shape) * torch.tensor([], dtype=dtype).element_size()
            reps = args.repeats or (200 if nbytes < (1 << 20) else 40 if nbytes < (1 << 26) else 10)
            for mode in args.modes:
                for threads in args.threads:
                    for cold in (False, True) if (nbytes > l2 and not args.no_cold) else (False,):
                        a, b = measure(op, shape, dtype, mode, threads, cold, reps, dim, args.masked)
                        r = a / b
                        flag = "  <-- slower" if r > 1.0 else ""
                        label = "cold" if cold else "hot"
                        print(
                            f"{op:14} {text:>14} {mode:7} {threads:>3} {label:5} "
                            f"{a * 1e6:11.1f} {b * 1e6:10.1f} {r:6.2f}{flag}",
                            flush=True,
                        )
                        rows.append(
                            dict(
                                op=op,
                                shape=text,
                                mode=mode,
                                threads=threads,
                                cache=label,
                                twopass_s=a,
                                torch_s=b,
                                ratio=r,
                            )
                        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"dtype": args.dtype, "masked": args.masked, "torch": torch.__version__, "results": rows}, f, indent=1
            )
    slower = [r for r in rows if r["ratio"] > 1.0]
    print(f"\n{len(slower)} of {len(rows)} cells slower than torch (ratio > 1.0)")


if __name__ == "__main__":
    main()
