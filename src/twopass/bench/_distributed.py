"""`python -m twopass bench --distributed`: vocabulary-parallel cross_entropy and logsumexp,
twopass.torch.distributed (one all-gather per forward) against a Megatron-style
implementation (an all-reduce of the row maximum, then one of the sum of exponentials with
the target logit), on the same processes: torch.distributed with gloo on the CPU (--device
cpu, the ranks share this machine's cores) or nccl on CUDA (--device cuda, one GPU per rank).

The cases are OPS x `--worlds` (rank counts) x `--sizes` (ROWSxVOCAB, float32), each shape
split over the ranks along the vocabulary. A step is timed on every rank between two
barriers; its time is the slowest rank's, and the table shows the median over the repeats
(after two warm-up steps), for the forward alone and for forward + backward. "collectives"
counts the torch.distributed calls of one forward / one backward (by wrapping the
torch.distributed functions). "comm" times the collectives alone with the same payloads
(twopass: all-gather of (k, rows + 1) floats; Megatron-style: all-reduce MAX of (rows,),
then all-reduce SUM of (2, rows)). Local traffic per rank, shard of R rows x C/world floats:

    twopass cross_entropy    forward 1R (+ tiny),   backward 1R + 1W (p) + 1R + 1W (scale)
    Megatron cross_entropy   forward 3R + 2W (max; exp(x - max) written; sum) + 1R + 1W
                             (normalise, kept for backward), backward 1R + 1W (in place)
    twopass logsumexp        forward 1R,   backward 1R + 1W
    Megatron logsumexp       forward 3R + 1W (max; exp(x - max); sum),   backward 1R + 1W

Before timing, the two implementations are checked to agree (else the command fails). On the
CPU, times include torch's allocations: glibc maps blocks this large afresh on every call,
so a new (rows x C/world) tensor costs its page faults too (the Megatron-style forward makes
one, twopass's none).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _report

OPS = ("cross_entropy", "logsumexp")
METHODS = ("twopass", "two all-reduces")
WORLDS = (2, 4)
QUICK_WORLDS = (2,)
SHAPES = ((4096, 32000),)
QUICK_SHAPES = ((1024, 32000),)
REPEATS, QUICK_REPEATS = 7, 3

_COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast", "barrier")
_counts = {"n": 0, "on": False}


def _count_collectives() -> None:
    """Wrap torch.distributed's collectives so that each call, while counting is on, adds one."""
    import torch.distributed as dist

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
def _baselines() -> tuple[Any, Any]:
    """(cross-entropy, logsumexp) autograd Functions of the two-all-reduce baseline (built
    here so that importing this module does not import torch)."""
    import torch
    import torch.distributed as dist

    class TwoAllReduceCE(torch.autograd.Function):
        """Mean cross-entropy: global max (all-reduce MAX), then sum of exp(x - max) and the
        target logit (one all-reduce SUM of both); the softmax is kept for a backward in place."""

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

    class TwoAllReduceLSE(torch.autograd.Function):
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

    return TwoAllReduceCE, TwoAllReduceLSE


# ----------------------------------------------------------------------------------
# One rank.
# ----------------------------------------------------------------------------------
def _median_step(fn, repeats: int, device: str) -> float:
    """Median over repeats of the slowest rank's time for fn(), in ms."""
    import torch
    import torch.distributed as dist

    times = []
    for i in range(repeats + 2):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        if i >= 2:
            times.append(float(dt) * 1e3)
    return statistics.median(times)


def _bench_shape(world: int, rank: int, n_rows: int, vocab: int, repeats: int, device: str) -> list[dict]:
    import torch
    import torch.distributed as dist

    import twopass.torch.distributed as tpd

    ce_base, lse_base = _baselines()
    sizes = [vocab * (r + 1) // world - vocab * r // world for r in range(world)]
    start = sum(sizes[:rank])
    x = (torch.randn(n_rows, sizes[rank], generator=torch.Generator().manual_seed(1234 + rank)) * 2).to(device)
    target = torch.randint(0, vocab, (n_rows,), generator=torch.Generator().manual_seed(99)).to(device)
    ops = {
        ("cross_entropy", "twopass"): lambda xr: tpd.cross_entropy(xr, target, vocab_start=start),
        ("cross_entropy", "two all-reduces"): lambda xr: ce_base.apply(xr, target, start, None),
        ("logsumexp", "twopass"): lambda xr: tpd.logsumexp(xr),
        ("logsumexp", "two all-reduces"): lambda xr: lse_base.apply(xr, None),
    }
    k = 4  # twopass's cross-entropy pack without weight or label smoothing: c, d, x_t, owner
    comm = {
        "twopass": lambda: tpd._all_gather(torch.zeros(k, n_rows + 1, device=device), None, world),
        "two all-reduces": lambda: (
            dist.all_reduce(torch.zeros(n_rows, device=device), op=dist.ReduceOp.MAX),
            dist.all_reduce(torch.zeros(2, n_rows, device=device)),
        ),
    }
    # the two implementations agree (a benchmark of wrong results would mean nothing)
    for op in OPS:
        a, b = ops[op, "twopass"](x), ops[op, "two all-reduces"](x)
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-5):
            raise RuntimeError(f"{op}: twopass and the two-all-reduce baseline disagree: {a} vs {b}")
    out = []
    for (op, method), f in ops.items():
        grad = torch.ones(n_rows, device=device) if op == "logsumexp" else None

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
                "shape": [n_rows, vocab],
                "op": op,
                "method": method,
                "collectives_fwd": n_fwd,
                "collectives_bwd": n_bwd,
                "fwd_ms": _median_step(lambda step=step: step(backward=False), repeats, device),
                "fwd_bwd_ms": _median_step(step, repeats, device),
                "comm_ms": _median_step(comm[method], repeats, device),
            }
        )
    return out


def _worker(rank: int, world: int, port: int, shapes, repeats: int, device: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    if device == "cpu":
        threads = max(1, (os.cpu_count() or 1) // world)
        os.environ["TWOPASS_NUM_THREADS"] = str(threads)  # before twopass reads it
        torch.set_num_threads(threads)
        backend, dev = "gloo", "cpu"
    else:
        torch.cuda.set_device(rank)
        backend, dev = "nccl", f"cuda:{rank}"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        _count_collectives()
        results = [row for n_rows, vocab in shapes for row in _bench_shape(world, rank, n_rows, vocab, repeats, dev)]
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_worlds(worlds: list[int], device: str) -> None:
    """A clear error before any process starts: rank counts >= 2, one GPU per rank on CUDA."""
    if not worlds or min(worlds) < 2:
        raise ValueError("--worlds: rank counts of at least 2, e.g. 2,4")
    if device == "cuda":
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < max(worlds):
            raise ValueError(
                f"--distributed --device cuda: {max(worlds)} ranks need {max(worlds)} CUDA devices (one per rank, "
                f"nccl), this machine has {have}"
            )


def run(
    console: Any, argv: list[str], *, worlds: list[int], shapes: list[tuple[int, int]], repeats: int, device: str
) -> dict[str, Any]:
    import platform

    import torch
    import torch.multiprocessing as mp

    import twopass

    check_worlds(worlds, device)
    t_start = time.perf_counter()
    results: list[dict[str, Any]] = []
    with _report.progress(console, len(worlds)) as advance:
        for world in worlds:
            advance(f"{world} ranks ({'gloo' if device == 'cpu' else 'nccl'})")
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "rank0.json")
                mp.start_processes(
                    _worker,
                    args=(world, _free_port(), shapes, repeats, device, out),
                    nprocs=world,
                    start_method="spawn",
                )
                results += json.loads(Path(out).read_text())
    machine = twopass.info() if device == "cpu" else {"device": torch.cuda.get_device_name(0)}
    machine = {**machine, "node": platform.node(), "cores": os.cpu_count()}
    doc = _report.header("twopass-bench-distributed/1", argv, machine)
    doc.update(
        backend="gloo" if device == "cpu" else "nccl",
        device=device,
        repeats=repeats,
        versions={"torch": torch.__version__},
        definitions={
            "times": "median over repeats of the slowest rank's time, ms (module twopass.bench._distributed)",
            "collectives": "torch.distributed calls of one forward / one backward",
            "comm_ms": "the collectives alone, same payloads",
        },
        results=results,
        elapsed_s=time.perf_counter() - t_start,
    )
    return doc


def print_report(console: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    m = doc["machine"]
    where = m.get("device") or f"{m.get('cpu', m['node'])} ({m['cores']} cores)"
    console.rule(f"twopass bench --distributed: {doc['backend']} on {where}, {doc['date']}")
    tab = Table(title=f"twopass.torch.distributed vs two all-reduces, float32, median of {doc['repeats']}")
    for c in ("ranks", "shape", "op", "method", "collectives fwd / bwd", "fwd ms", "fwd+bwd ms", "comm ms"):
        tab.add_column(c, justify="right" if c.endswith("ms") or c == "ranks" else "left")
    for r in doc["results"]:
        tab.add_row(
            str(r["world"]),
            "x".join(map(str, r["shape"])),
            r["op"],
            r["method"],
            f"{r['collectives_fwd']} / {r['collectives_bwd']}",
            f"{r['fwd_ms']:.2f}",
            f"{r['fwd_bwd_ms']:.2f}",
            f"{r['comm_ms']:.3f}",
        )
    console.print(tab)
    console.print("twopass speed-up (two all-reduces time / twopass time):")
    by = {(r["world"], tuple(r["shape"]), r["op"], r["method"]): r for r in doc["results"]}
    for (world, shape, op, method), r in by.items():
        if method == "twopass":
            b = by[world, shape, op, "two all-reduces"]
            console.print(
                f"  {world} ranks {shape[0]}x{shape[1]} {op}: fwd {b['fwd_ms'] / r['fwd_ms']:.2f}x, fwd+bwd "
                f"{b['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x, comm alone {b['comm_ms'] / r['comm_ms']:.2f}x"
            )
