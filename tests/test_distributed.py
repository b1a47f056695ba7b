"""twopass.torch.distributed on 1, 2 and 4 gloo ranks (processes on loopback) against the
unsharded computation of torch in float64.

Starting a rank costs seconds (imports), so each world size is one launch: its ranks run every
case of CASES and write what failed to JSON files; the tests read those, one test per (world
size, case). Collectives time out after 60 s and the launch after LAUNCH_TIMEOUT, so a hang fails
instead of blocking CI. Each case also counts the torch.distributed calls: one collective per
forward (none with one rank), one all-reduce in the backward of softmax/log_softmax, none in the
backward of logsumexp and cross_entropy.

Tolerances, elementwise against the float64 reference with u the input dtype's unit roundoff
(2^-24 float32, 2^-53 float64) and A = 64 (module docstring of twopass.torch.distributed):
  probabilities  |y - ref| <= (A + |x - lse|) u |ref|        (the conditioning every softmax pays)
  log values     |y - ref| <= A u (1 + |ref|)                (log_softmax, logsumexp, losses)
  gradients      |g - ref| <= A u (|ref| + max|ref|)         (p - onehot cancels near p = 1)
                 + 2 |lse| u |ref| for logsumexp's            (its lse is rounded per shard, then again)
Special values (NaN, +-inf) must match exactly.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import twopass.torch.distributed as tpd  # noqa: E402

WORLDS = (1, 2, 4)
LAUNCH_TIMEOUT = 120.0  # seconds for one world size, start-up included (4 ranks share 2 cores here)
A = 64.0
INF, NAN = math.inf, math.nan
_COLLECTIVES = (
    "all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "all_reduce_coalesced",
    "broadcast", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
    "gather", "scatter", "barrier", "all_gather_object", "broadcast_object_list",
)  # fmt: skip


# ----------------------------------------------------------------------------------
# Inside a rank.
# ----------------------------------------------------------------------------------
class _Count:
    """Counts calls to torch.distributed's collectives (outermost calls only)."""

    n = 0
    depth = 0

    @classmethod
    def install(cls) -> None:
        for name in _COLLECTIVES:
            if hasattr(dist, name):
                setattr(dist, name, cls._wrap(getattr(dist, name)))

    @classmethod
    def _wrap(cls, fn):
        def counted(*args, **kwargs):
            cls.n += cls.depth == 0
            cls.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                cls.depth -= 1

        return counted


def _counted(fn, *args, **kwargs):
    """(fn's result, collectives it called)."""
    n0 = _Count.n
    out = fn(*args, **kwargs)
    return out, _Count.n - n0


# Inside the ranks a failed check is recorded and the case goes on, so that every rank still
# makes the same collective calls (a rank leaving a case early would desynchronise the group).
_SOFT_FAILURES: list[str] | None = None


def _fail(msg: str) -> None:
    if _SOFT_FAILURES is None:
        raise AssertionError(msg)
    _SOFT_FAILURES.append(msg)


def _expect_count(what: str, got: int, per_step: int, world: int) -> None:
    want = per_step if world > 1 else 0
    if got != want:
        _fail(f"{what}: {got} collectives, expected {want}")


def _sizes(total: int, world: int, empty: bool = False) -> list[int]:
    """Uneven shard sizes, rank r's about proportional to r + 1; with `empty`, rank 1's is 0."""
    weights = [0 if (empty and r == 1) else r + 1 for r in range(world)]
    cuts = [total * sum(weights[:r]) // sum(weights) for r in range(world + 1)]
    return [cuts[r + 1] - cuts[r] for r in range(world)]


def _shard(x, dim: int, rank: int, sizes: list[int]):
    start = sum(sizes[:rank])
    return x.narrow(dim, start, sizes[rank]), start


def _check(what: str, got, ref, bound) -> None:
    """got (any dtype) against the float64 ref: same NaN/inf pattern, |got - ref| <= bound."""
    got, ref = got.detach().double(), ref.detach().double()
    if got.shape != ref.shape:
        return _fail(f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}")
    if not torch.equal(got.isnan(), ref.isnan()):
        return _fail(f"{what}: NaN pattern differs\n{got}\n{ref}")
    special = ref.isinf()
    if not torch.equal(got[special], ref[special]):
        return _fail(f"{what}: infinities differ\n{got}\n{ref}")
    fin = torch.isfinite(ref)
    err = (got - ref).abs()
    bad = fin & ~(err <= bound)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        _fail(
            f"{what}: {int(bad.sum())} out of bound, first at {i}: got {got[i].item()!r} ref {ref[i].item()!r} "
            f"err {err[i].item():.3g} bound {torch.as_tensor(bound).expand_as(err)[i].item():.3g}"
        )


def _u(dtype) -> float:
    return torch.finfo(torch.promote_types(dtype, torch.float32)).eps / 2


def _prob_bound(ref, x64, dim, dtype):
    """ref and x64: whole rows (the conditioning needs the row's lse); shard the bound after."""
    x64 = x64.detach()
    lse = torch.logsumexp(x64, dim, keepdim=True)
    cond = (x64 - lse).abs().nan_to_num(0.0, 0.0, 0.0)
    return (A + cond) * _u(dtype) * ref.abs() + 1e-300


def _log_bound(ref, dtype):
    return A * _u(dtype) * (1 + ref.abs().nan_to_num(0.0, 0.0, 0.0))


def _grad_bound(ref, dtype, cond=0.0):
    """cond: the conditioning of the output the gradient is computed from (|lse| for logsumexp)."""
    r = ref.abs().nan_to_num(0.0, 0.0, 0.0)
    return (A * (r + (r.max() if r.numel() else 0.0)) + cond * r) * _u(dtype)


def _data(shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def _run_ops(rank, world, x64, dim, dtype, sizes, grads=True):
    """softmax, log_softmax, logsumexp of this rank's shard of x64 (cast to dtype) against torch."""
    xs, _ = _shard(x64, dim, rank, sizes)
    upstream = _data(x64.shape, seed=7)
    g_shard, _ = _shard(upstream, dim, rank, sizes)
    for name, fn, ref_fn in (
        ("softmax", tpd.softmax, torch.softmax),
        ("log_softmax", tpd.log_softmax, torch.log_softmax),
    ):
        x = xs.detach().to(dtype).requires_grad_(grads)
        x_ref = x64.detach().to(dtype).double().requires_grad_(grads)
        y, n = _counted(fn, x, dim)
        _expect_count(f"{name} forward", n, 1, world)
        assert y.dtype == dtype
        ref = ref_fn(x_ref, dim)
        bound = _prob_bound(ref, x_ref, dim, dtype) if name == "softmax" else _log_bound(ref, dtype)
        _check(f"{name} {dtype} dim={dim}", y, *(_shard(t, dim, rank, sizes)[0] for t in (ref, bound)))
        if grads:
            _, n = _counted(y.backward, g_shard.to(dtype))
            _expect_count(f"{name} backward", n, 1, world)
            (ref_grad,) = torch.autograd.grad(ref, x_ref, upstream)
            ref_grad_shard, _ = _shard(ref_grad, dim, rank, sizes)
            _check(f"{name} grad {dtype} dim={dim}", x.grad, ref_grad_shard, _grad_bound(ref_grad_shard, dtype))
    for keepdim in (False, True):
        x = xs.detach().to(dtype).requires_grad_(grads)
        x_ref = x64.detach().to(dtype).double().requires_grad_(grads)
        lse, n = _counted(tpd.logsumexp, x, dim, keepdim)
        _expect_count("logsumexp forward", n, 1, world)
        ref = torch.logsumexp(x_ref, dim, keepdim)
        _check(f"logsumexp {dtype} dim={dim} keepdim={keepdim}", lse, ref, _log_bound(ref, dtype))
        if grads:
            g = _data(ref.shape, seed=8)
            _, n = _counted(lse.backward, g.to(dtype))
            _expect_count("logsumexp backward", n, 0, world)
            (ref_grad,) = torch.autograd.grad(ref, x_ref, g)
            ref_grad_shard, _ = _shard(ref_grad, dim, rank, sizes)
            # its gradient is exp(x - lse) with lse rounded to the output dtype (as unsharded)
            cond = ref.detach().abs() if keepdim else ref.detach().abs().unsqueeze(dim % x64.dim())
            bound = _grad_bound(ref_grad_shard, dtype, 2 * cond)  # lse rounded per shard and once more
            _check(f"logsumexp grad {dtype}", x.grad, ref_grad_shard, bound)


def case_ops_float64(rank, world):
    for dim in (-1, 0):
        shape = (9, 301) if dim == -1 else (301, 5)
        _run_ops(rank, world, _data(shape), dim, torch.float64, _sizes(301, world))


def case_ops_float32(rank, world):
    for dim in (-1, 0):
        shape = (9, 1000) if dim == -1 else (1000, 5)
        _run_ops(rank, world, _data(shape, seed=1), dim, torch.float32, _sizes(1000, world))
    # logits far from 0 (every shard takes the exact path) and a 3-d input sharded in the middle
    _run_ops(rank, world, _data((4, 257), seed=2) + 1e4, -1, torch.float32, _sizes(257, world))
    _run_ops(rank, world, _data((3, 130, 4), seed=3), 1, torch.float32, _sizes(130, world))


def case_ops_bfloat16(rank, world):
    # computed in float32 and rounded to bfloat16: the bound is bfloat16's rounding
    x64 = _data((6, 200), seed=4).to(torch.bfloat16).double()
    sizes = _sizes(200, world)
    xs, _ = _shard(x64, -1, rank, sizes)
    x = xs.to(torch.bfloat16)
    u = 2.0**-8
    ref = _shard(torch.softmax(x64, -1), -1, rank, sizes)[0]
    _check("softmax bf16", tpd.softmax(x), ref, 2 * u * ref.abs() + 1e-30)
    ref = _shard(torch.log_softmax(x64, -1), -1, rank, sizes)[0]
    _check("log_softmax bf16", tpd.log_softmax(x), ref, 2 * u * (1 + ref.abs()))
    ref = torch.logsumexp(x64, -1)
    _check("logsumexp bf16", tpd.logsumexp(x), ref, 2 * u * (1 + ref.abs()))


def _special_rows(total: int, sizes: list[int]):
    """Rows with special values, placed so that they land in different shards."""
    x = _data((12, total), seed=5)
    last = sum(sizes[:-1])  # first column of the last shard
    x[0, 3] = NAN
    x[1, total - 1] = NAN  # NaN in the last shard only
    x[2, 1] = INF
    x[3, total - 2] = INF
    x[4, :] = -INF  # all -inf
    x[5, ::3] = -INF  # -inf entries in a finite row
    x[6, :last] = -INF  # every shard but the last all -inf
    x[7, last:] = -INF  # the last shard all -inf
    x[8, :] = 3e38  # huge: softmax 1/total
    x[9, ::2] = -1e37  # (sums of the row stay finite in float32)
    x[10, :] = x[10, :] * 1e30  # spread over +-1e31
    x[11, :] = 100.0 + x[11, :]  # exact path, finite
    return x


def case_special_values(rank, world):
    total = 23
    for empty in (False, True):
        sizes = _sizes(total, world, empty=empty)
        x64 = _special_rows(total, sizes)
        for dtype in (torch.float32, torch.float64):
            x64d = x64.to(dtype).double()
            xs = _shard(x64d, -1, rank, sizes)[0].to(dtype)
            ref = torch.softmax(x64d, -1)
            bound = _prob_bound(ref, x64d, -1, dtype)
            _check(
                f"softmax special {dtype} {sizes}",
                tpd.softmax(xs),
                *(_shard(t, -1, rank, sizes)[0] for t in (ref, bound)),
            )
            ref = _shard(torch.log_softmax(x64d, -1), -1, rank, sizes)[0]
            _check(f"log_softmax special {dtype} {sizes}", tpd.log_softmax(xs), ref, _log_bound(ref, dtype))
            ref = torch.logsumexp(x64d, -1)
            _check(f"logsumexp special {dtype} {sizes}", tpd.logsumexp(xs), ref, _log_bound(ref, dtype))


def _ce_reference(x64, target, weight, ignore_index, reduction, eps, zc, softcap):
    """docs/cross_entropy.md through torch: F.cross_entropy on x' plus the z-loss term."""
    xs = softcap * torch.tanh(x64 / softcap) if softcap else x64
    loss = F.cross_entropy(xs, target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    valid = target != ignore_index
    z = torch.where(valid, zc * torch.logsumexp(xs, -1) ** 2, 0.0) if zc else torch.zeros_like(valid, dtype=xs.dtype)
    z = {"mean": z.sum() / valid.sum(), "sum": z.sum(), "none": z}[reduction]
    return loss + z, z


def _ce_compare(rank, world, x64, target, sizes, dtype, weight=None, grads=True, tag="", **kw):
    opts = {"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0, "z_loss": 0.0, "softcap": None}
    opts.update(kw)
    xs, start = _shard(x64, -1, rank, sizes)
    x = xs.detach().to(dtype).requires_grad_(grads)
    w = None if weight is None else _shard(weight, -1, rank, sizes)[0].to(dtype)
    (loss, z), n = _counted(tpd.cross_entropy, x, target, w, vocab_start=start, return_z_loss=True, **opts)
    _expect_count(f"cross_entropy forward {tag}", n, 1, world)
    x_ref = x64.detach().to(dtype).double().requires_grad_(grads)
    w_ref = None if weight is None else weight.to(dtype).double()
    ref, ref_z = _ce_reference(x_ref, target, w_ref, opts["ignore_index"], opts["reduction"],
                               opts["label_smoothing"], opts["z_loss"], opts["softcap"])  # fmt: skip
    what = f"cross_entropy {dtype} {tag} {opts}"
    assert loss.dtype == dtype
    _check(what, loss, ref, _log_bound(ref, dtype))
    _check(what + " z", z, ref_z, _log_bound(ref_z, dtype))
    if grads:
        g = _data(ref.shape, seed=9)
        _, n = _counted(loss.backward, g.to(dtype))
        _expect_count("cross_entropy backward", n, 0, world)
        (ref_grad,) = torch.autograd.grad(ref, x_ref, g)
        ref_grad = _shard(ref_grad, -1, rank, sizes)[0]
        # torch's gradient of an ignored row is NaN when its logits hold NaN; the definition says 0
        ignored = target == opts["ignore_index"]
        ref_grad[ignored] = 0.0
        _check(what + " grad", x.grad, ref_grad, _grad_bound(ref_grad, dtype))
    return loss


def _ce_data(rows, total, seed):
    x64 = _data((rows, total), seed=seed)
    target = torch.randint(0, total, (rows,), generator=torch.Generator().manual_seed(seed))
    target[1] = target[5] = -100
    weight = torch.rand(total, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) + 0.1
    return x64, target, weight


def case_cross_entropy_float64(rank, world):
    total = 101
    x64, target, weight = _ce_data(16, total, seed=10)
    for empty in (False, True):
        sizes = _sizes(total, world, empty=empty)
        for reduction in ("mean", "sum", "none"):
            for w in (None, weight):
                for eps in (0.0, 0.1):
                    for zc in (0.0, 1e-3):
                        for cap in (None, 5.0):
                            _ce_compare(rank, world, x64, target, sizes, torch.float64, w, tag=f"{sizes}",
                                        reduction=reduction, label_smoothing=eps, z_loss=zc, softcap=cap)  # fmt: skip
    sizes = _sizes(total, world)
    _ce_compare(rank, world, x64, target, sizes, torch.float64, weight, label_smoothing=1.0)
    t7 = target.clamp_min(0)
    t7[::3] = 7  # ignore_index may be a valid class
    _ce_compare(rank, world, x64, t7, sizes, torch.float64, ignore_index=7, label_smoothing=0.1)
    # torch's (N, C, d1) ranks: logits (2, C_r, 8), the class axis 1; target (2, 8)
    xs, start = _shard(x64, -1, rank, sizes)
    got = tpd.cross_entropy(xs.view(2, 8, -1).transpose(1, 2), target.view(2, 8), vocab_start=start, reduction="none")
    ref = F.cross_entropy(x64.view(2, 8, -1).transpose(1, 2), target.view(2, 8), reduction="none")
    _check("cross_entropy 3-d", got, ref, _log_bound(ref, got.dtype))


def case_cross_entropy_float32(rank, world):
    total = 3000
    x64, target, weight = _ce_data(32, total, seed=11)
    sizes = _sizes(total, world)
    for reduction in ("mean", "none"):
        for w in (None, weight):
            _ce_compare(rank, world, x64, target, sizes, torch.float32, w, reduction=reduction,
                        label_smoothing=0.1, z_loss=1e-4)  # fmt: skip
    _ce_compare(rank, world, x64 * 10, target, sizes, torch.float32, softcap=30.0)
    _ce_compare(rank, world, x64 + 1e4, target, sizes, torch.float32, tag="far from 0", label_smoothing=0.0)
    # bfloat16 logits: computed in float32, the loss rounded to bfloat16
    xs, start = _shard(x64.to(torch.bfloat16), -1, rank, sizes)
    got = tpd.cross_entropy(xs, target, vocab_start=start)
    ref = F.cross_entropy(x64.to(torch.bfloat16).double(), target)
    assert got.dtype == torch.bfloat16
    _check("cross_entropy bf16", got, ref, 2.0**-7 * ref.abs())


def case_cross_entropy_special_values(rank, world):
    total = 23
    sizes = _sizes(total, world)
    last = sum(sizes[:-1])
    x64 = _special_rows(total, sizes)
    target = torch.tensor([0, 5, 22, 4, 0, 3, 20, 2, 7, 9, 11, 13])
    target[5] = 3  # x[5, 3] = -inf: -inf at the target of a finite row -> +inf
    target[6] = last  # target inside the only finite shard
    x_ign = x64.clone()
    x_ign[1] = NAN
    t_ign = target.clone()
    t_ign[1] = -100  # an ignored row of NaN: loss and gradient 0
    for dtype in (torch.float32, torch.float64):
        for eps in (0.0, 0.1):
            _ce_compare(rank, world, x64, target, sizes, dtype, reduction="none", label_smoothing=eps, grads=False)
            _ce_compare(rank, world, x_ign[[1, 5, 6, 7, 8]], t_ign[[1, 5, 6, 7, 8]], sizes, dtype,
                        reduction="none", label_smoothing=eps)  # fmt: skip
    # every row ignored: mean is 0/0 = NaN, as torch
    xs, start = _shard(x64[5:8], -1, rank, sizes)
    got = tpd.cross_entropy(xs, torch.full((3,), -100), vocab_start=start)
    assert got.isnan(), got


def case_vocab_start_and_errors(rank, world):
    total = 40
    sizes = _sizes(total, world, empty=world > 1)
    x64, target, _ = _ce_data(6, total, seed=12)
    xs, start = _shard(x64, -1, rank, sizes)
    assert tpd.shard_offset(sizes[rank]) == start
    loss, n = _counted(tpd.cross_entropy, xs, target)  # vocab_start=None: one more all-gather
    _expect_count("cross_entropy with vocab_start=None", n, 2, world)
    assert torch.equal(loss, tpd.cross_entropy(xs, target, vocab_start=start))
    # replicated results are bitwise equal on every rank
    for out in (loss, tpd.logsumexp(xs)):
        every = [torch.empty_like(out) for _ in range(world)] if world > 1 else [out]
        if world > 1:
            dist.all_gather(every, out.contiguous())
        assert all(torch.equal(e, out) for e in every), "results differ between ranks"
    # a target no rank owns: ValueError on every rank (after the collective: no rank hangs)
    bad = target.clone()
    bad[2] = total
    with pytest.raises(ValueError, match="outside"):
        tpd.cross_entropy(xs, bad, vocab_start=start)
    # argument errors are raised before any collective
    n0 = _Count.n
    for kwargs, err in (
        ({"reduction": "avg"}, ValueError),
        ({"label_smoothing": 1.5}, ValueError),
        ({"z_loss": -1.0}, ValueError),
        ({"softcap": 0.0}, ValueError),
        ({"weight": torch.ones(sizes[rank] + 1, dtype=torch.float64)}, ValueError),
    ):
        with pytest.raises(err):
            tpd.cross_entropy(xs, target, vocab_start=start, **kwargs)
    for bad in (target.double(), target > 0):  # not class indices
        with pytest.raises(TypeError):
            tpd.cross_entropy(xs, bad, vocab_start=start)
    with pytest.raises(ValueError):
        tpd.cross_entropy(xs, target[:-1], vocab_start=start)
    with pytest.raises(IndexError):
        tpd.softmax(xs, dim=2)
    with pytest.raises(TypeError):
        tpd.softmax(xs.long())
    assert _Count.n == n0


def case_linear_cross_entropy(rank, world):
    """The head's weight (and bias) sharded by rows, uneven, rank 1's empty: the loss and the
    gradients of input, weight shard and bias shard against the unsharded float64 graph;
    one all-gather forward, one all-reduce (of grad_input) backward."""
    total, hdim = 37, 8
    g = torch.Generator().manual_seed(21)
    w64 = torch.randn(total, hdim, generator=g, dtype=torch.float64)
    b64 = torch.randn(total, generator=g, dtype=torch.float64)
    h64 = torch.randn(2, 9, hdim, generator=g, dtype=torch.float64)
    target = torch.randint(0, total, (2, 9), generator=g)
    target[0, 3] = target[1, 0] = -100
    sizes = _sizes(total, world, empty=world > 1)
    start = sum(sizes[:rank])
    for dtype in (torch.float64, torch.float32):
        for reduction, kw in (
            ("mean", {}),
            ("sum", {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0}),
            ("none", {"label_smoothing": 0.1, "z_loss": 1e-3}),
        ):
            h = h64.to(dtype).clone().requires_grad_()
            w = w64[start : start + sizes[rank]].to(dtype).clone().requires_grad_()
            b = b64[start : start + sizes[rank]].to(dtype).clone().requires_grad_()
            opts = dict(reduction=reduction, vocab_start=start, chunk_size=4, **kw)
            loss, n = _counted(tpd.linear_cross_entropy, h, w, target, b, **opts)
            _expect_count("linear_cross_entropy forward", n, 1, world)
            refs = [a.to(dtype).double().clone().requires_grad_() for a in (h64, w64, b64)]
            logits = F.linear(*refs)
            ref, _ = _ce_reference(
                logits.reshape(-1, total), target.reshape(-1), None, -100, "none",
                kw.get("label_smoothing", 0.0), kw.get("z_loss", 0.0), kw.get("softcap"),
            )  # fmt: skip
            valid = target.reshape(-1) != -100
            ref = {"mean": ref.sum() / valid.sum(), "sum": ref.sum(), "none": ref.view(target.shape)}[reduction]
            what = f"linear_cross_entropy {dtype} {reduction} {kw}"
            _check(what, loss, ref, _log_bound(ref, dtype) * 4)
            up = _data(ref.shape, seed=5) if reduction == "none" else torch.tensor(1.5, dtype=torch.float64)
            _, n = _counted(loss.backward, up.to(dtype))
            _expect_count("linear_cross_entropy backward", n, 1, world)
            gh, gw, gb = torch.autograd.grad(ref, refs, up)
            _check(what + " grad input", h.grad, gh, _grad_bound(gh, dtype) * 4)
            mine = slice(start, start + sizes[rank])
            _check(what + " grad weight", w.grad, gw[mine], (_grad_bound(gw, dtype) * 4)[mine])
            _check(what + " grad bias", b.grad, gb[mine], (_grad_bound(gb, dtype) * 4)[mine])


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["TWOPASS_NUM_THREADS"] = "1"  # several ranks share few cores
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    _Count.install()
    global _SOFT_FAILURES
    failures = {}
    for name, case in CASES.items():
        _SOFT_FAILURES = []
        try:
            case(rank, world)
        except Exception:
            _SOFT_FAILURES.append(traceback.format_exc())
            print(f"[rank {rank}] {name}: {_SOFT_FAILURES[-1]}", file=sys.stderr, flush=True)
        failures[name] = "\n".join(_SOFT_FAILURES) or None
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(failures))
    dist.destroy_process_group()


# ----------------------------------------------------------------------------------
# The launches and the tests.
# ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"world{w}")
def world_results(request, tmp_path_factory):
    """{case: {rank: traceback or None}} for one launch of `world` ranks."""
    world = request.param
    out = tmp_path_factory.mktemp(f"world{world}")
    ctx = mp.start_processes(
        _worker, args=(world, _free_port(), str(out)), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} ranks did not finish within {LAUNCH_TIMEOUT} s")
    finally:
        for p in ctx.processes:  # only those this fixture started, and only if still running
            if p.is_alive():
                p.kill()
    per_rank = {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(world)}
    return world, {case: {r: per_rank[r].get(case, "not run") for r in range(world)} for case in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_distributed(world_results, case):
    world, results = world_results
    failed = {r: tb for r, tb in results[case].items() if tb}
    assert not failed, f"{case} on {world} ranks failed:\n" + "\n".join(f"[rank {r}]\n{tb}" for r, tb in failed.items())


def test_single_process_without_process_group():
    """Without an initialised process group the ops are the unsharded ones (no collective)."""
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    x = _data((5, 77), seed=13)
    _check("softmax", tpd.softmax(x), torch.softmax(x, -1), _prob_bound(torch.softmax(x, -1), x, -1, x.dtype))
    target = torch.randint(0, 77, (5,), generator=torch.Generator().manual_seed(0))
    ref = F.cross_entropy(x, target)
    _check("cross_entropy", tpd.cross_entropy(x, target), ref, _log_bound(ref, x.dtype))
