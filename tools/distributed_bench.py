"""Vocabulary-parallel cross-entropy and logsumexp: twopass.torch.distributed (one all-gather per
forward) against a Megatron-style implementation (an all-reduce of the row maximum, then one of
the sum of exponentials with the target logit), on the same gloo processes of this machine.

    PYTHONPATH=src python tools/distributed_bench.py                      # 2 and 4 ranks, 4096x32000
    PYTHONPATH=src python tools/distributed_bench.py --worlds 2 --shapes 4096x32000,64x32000 --json out.json

Each shape (rows x vocabulary, float32) is split over the ranks along the vocabulary. A step is
timed on every rank between two barriers; the step's time is the slowest rank's, and the table
shows the median over --repeats steps (after two warm-up steps), for the forward alone and for
forward + backward. "collectives" counts the torch.distributed calls of one forward / one
backward (counted by wrapping the torch.distributed functions). "comm" times the collectives
alone with the same payloads (twopass: all-gather of (k, rows + 1) floats; Megatron-style:
all-reduce MAX of (rows,), then all-reduce SUM of (2, rows)), i.e. what the collective count
costs by itself. Local traffic per rank, shard of R rows x C/world floats:
    twopass cross_entropy    forward 1R (+ tiny),   backward 1R + 1W (p) + 1R + 1W (scale)
    Megatron cross_entropy   forward 3R + 2W (max; exp(x - max) written; sum) + 1R + 1W (normalise,
                             kept for backward), backward 1R + 1W (in place on the kept softmax)
    twopass logsumexp        forward 1R,   backward 1R + 1W
    Megatron logsumexp       forward 3R + 1W (max; exp(x - max); sum),   backward 1R + 1W
Ranks share this machine's cores (each gets cores // world threads); numbers from one run. Times
include torch's allocations: on the CPU, glibc maps blocks this large afresh on every call, so a
new (rows x C/world) tensor costs its page faults too (the Megatron-style forward makes one,
twopass's none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast", "barrier")
_counts = {"n": 0, "on": False}


def _count_collectives() -> None:
    """Wrap torch.distributed's collectives so that each call, while counting is on, adds one."""
    for name in _COLLECTIVES:
        if hasattr(dist, name):
            fn = getattr(dist, name)

            def counted(*args, _fn=fn, **kwargs):
                _counts["n"] += _counts["on"]
                return _fn(*args, **kwargs)

            setattr(dist, name, counted)


def _collectives(fn) -> int:
    _counts["n"], _counts["on"] = 0, True
    try:
        fn()
    finally:
        _counts["on"] = False
    return _counts["n"]


# ----------------------------------------------------------------------------------
# The baseline: Megatron-style vocabulary-parallel ops with two all-reduces per forward.
# ----------------------------------------------------------------------------------
class _TwoAllReduceCE(torch.autograd.Function):
    """Mean cross-entropy: global max (all-reduce MAX), then sum of exp(x - max) and the target
    logit (one all-reduce SUM of both); the softmax is kept for a backward in place."""

    @staticmethod
    def forward(ctx, x, target, start, group):
        m = x.amax(-1)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        e = (x - m[:, None]).exp_()
        local = target - start
        owned = (local >= 0) & (local < x.shape[1])
        idx = torch.where(owned, local, 0)
        both = torch.stack((e.sum(-1), x.gather(1, idx[:, None]).squeeze(1).masked_fill(~owned, 0.0)))
        dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
        loss = (m + both[0].log() - both[1]).mean()
        e.div_(both[0][:, None])
        ctx.save_for_backward(e, idx, owned)
        return loss

    @staticmethod
    def backward(ctx, g):
        p, idx, owned = ctx.saved_tensors
        p.scatter_add_(1, idx[:, None], -owned.to(p.dtype)[:, None])  # p - onehot, in place
        return p.mul_(g / p.shape[0]), None, None, None


class _TwoAllReduceLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        m = x.amax(-1)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        s = (x - m[:, None]).exp_().sum(-1)
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
        lse = m + s.log()
        ctx.save_for_backward(x, lse)
        return lse

    @staticmethod
    def backward(ctx, g):
        x, lse = ctx.saved_tensors
        return (x - lse[:, None]).exp_().mul_(g[:, None]), None


# ----------------------------------------------------------------------------------
# One rank.
# ----------------------------------------------------------------------------------
def _median_step(fn, repeats: int) -> float:
    """Median over repeats of the slowest rank's time for fn(), in ms."""
    times = []
    for i in range(repeats + 2):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        if i >= 2:
            times.append(float(dt) * 1e3)
    return statistics.median(times)


def _bench_shape(world: int, rank: int, n_rows: int, vocab: int, repeats: int) -> list[dict]:
    import twopass.torch.distributed as tpd

    sizes = [vocab * (r + 1) // world - vocab * r // world for r in range(world)]
    start = sum(sizes[:rank])
    x = torch.randn(n_rows, sizes[rank], generator=torch.Generator().manual_seed(1234 + rank)) * 2
    target = torch.randint(0, vocab, (n_rows,), generator=torch.Generator().manual_seed(99))
    ops = {
        ("cross_entropy", "twopass"): lambda xr: tpd.cross_entropy(xr, target, vocab_start=start),
        ("cross_entropy", "two all-reduces"): lambda xr: _TwoAllReduceCE.apply(xr, target, start, None),
        ("logsumexp", "twopass"): lambda xr: tpd.logsumexp(xr),
        ("logsumexp", "two all-reduces"): lambda xr: _TwoAllReduceLSE.apply(xr, None),
    }
    k = 4  # twopass's cross-entropy pack without weight or label smoothing: c, d, x_t, owner
    comm = {
        "twopass": lambda: tpd._all_gather(torch.zeros(k, n_rows + 1), None, world),
        "two all-reduces": lambda: (
            dist.all_reduce(torch.zeros(n_rows), op=dist.ReduceOp.MAX),
            dist.all_reduce(torch.zeros(2, n_rows)),
        ),
    }
    # the two implementations agree (a benchmark of wrong results would mean nothing)
    for op in ("cross_entropy", "logsumexp"):
        a, b = ops[op, "twopass"](x), ops[op, "two all-reduces"](x)
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-5):
            raise AssertionError(f"{op}: twopass and the two-all-reduce baseline disagree: {a} vs {b}")
    out = []
    for (op, method), f in ops.items():
        grad = torch.ones(n_rows) if op == "logsumexp" else None

        def step(f=f, grad=grad, backward=True):
            y = f(x.detach().requires_grad_())
            if backward:
                y.backward(grad)
            return y

        kept = []
        n_fwd = _collectives(lambda step=step, kept=kept: kept.append(step(backward=False)))
        n_bwd = _collectives(lambda grad=grad, kept=kept: kept[0].backward(grad))
        out.append(
            {
                "world": world,
                "shape": f"{n_rows}x{vocab}",
                "op": op,
                "method": method,
                "collectives_fwd": n_fwd,
                "collectives_bwd": n_bwd,
                "fwd_ms": _median_step(lambda step=step: step(backward=False), repeats),
                "fwd_bwd_ms": _median_step(step, repeats),
                "comm_ms": _median_step(comm[method], repeats),
            }
        )
    return out


def _worker(rank: int, world: int, port: int, shapes, repeats: int, out: str) -> None:
    threads = max(1, (os.cpu_count() or 1) // world)
    os.environ["TWOPASS_NUM_THREADS"] = str(threads)  # before twopass reads it
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    _count_collectives()
    results = [row for n_rows, vocab in shapes for row in _bench_shape(world, rank, n_rows, vocab, repeats)]
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", default="2,4", help="comma-separated rank counts (default 2,4)")
    ap.add_argument("--shapes", default="4096x32000", help="comma-separated ROWSxVOCAB (default 4096x32000)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    results = []
    for world in (int(w) for w in args.worlds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rank0.json")
            mp.start_processes(
                _worker, args=(world, _free_port(), shapes, args.repeats, out), nprocs=world, start_method="spawn"
            )
            results += json.loads(Path(out).read_text())

    print(f"# twopass.torch.distributed vs two all-reduces, gloo on {platform.node()} ({os.cpu_count()} cores), "
          f"torch {torch.__version__}, float32, median of {args.repeats}")  # fmt: skip
    print()
    print("| ranks | shape | op | method | collectives fwd / bwd | fwd ms | fwd+bwd ms | comm ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        counts = f"{r['collectives_fwd']} / {r['collectives_bwd']}"
        times = f"{r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['comm_ms']:.3f}"
        print(f"| {r['world']} | {r['shape']} | {r['op']} | {r['method']} | {counts} | {times} |")
    print()
    print("twopass speed-up (two all-reduces time / twopass time):")
    by = {(r["world"], r["shape"], r["op"], r["method"]): r for r in results}
    for (world, shape, op, method), r in by.items():
        if method == "twopass":
            b = by[world, shape, op, "two all-reduces"]
            print(
                f"  {world} ranks {shape} {op}: fwd {b['fwd_ms'] / r['fwd_ms']:.2f}x, fwd+bwd "
                f"{b['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x, comm alone {b['comm_ms'] / r['comm_ms']:.2f}x"
            )
    if args.json:
        meta = {"node": platform.node(), "cores": os.cpu_count(), "torch": torch.__version__, "repeats": args.repeats}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
