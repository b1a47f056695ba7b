"""Vocabulary-parallel softmax, log_softmax, logsumexp and cross-entropy over torch.distributed.

    import twopass.torch.distributed as tpd

    # each rank of `group` holds a slice of the softmax axis (uneven slices are fine)
    y    = tpd.softmax(x_shard, dim=-1, group=group)        # this rank's slice of the softmax
    z    = tpd.log_softmax(x_shard, dim=-1, group=group)
    lse  = tpd.logsumexp(x_shard, dim=-1, group=group)      # whole-row result, the same on every rank
    loss = tpd.cross_entropy(logits_shard, target, vocab_start=start, group=group)
    loss = tpd.linear_cross_entropy(hidden, head_weight_shard, target, vocab_start=start, group=group)

One collective per forward
--------------------------
The two-pass algorithm keeps a row's sum of exponentials as a pair (S, E), sum = S * 2^E, and
pairs merge in any order: (S1, E1) + (S2, E2) = (S1 * 2^(E1 - E) + S2 * 2^(E2 - E), E) with
E = max(E1, E2). In log form the pair of a shard is its local logsumexp, lse_r = log(S) + E ln 2,
which twopass's logsumexp kernel (C++ on the CPU, Triton on CUDA) computes in one pass over the
shard; the row's logsumexp is the logsumexp over ranks of the lse_r. So each rank needs only the other ranks' per-row
statistics, and one all-gather brings them: every rank packs, per row, its pair (below), the
logit of the target class if it owns that class, and for label smoothing its partial
sum_j w_j x_j, into ONE tensor of shape (k, rows); `all_gather_single` (or
`all_gather_into_tensor` on older torch) returns the (world, k, rows) stack, and every rank
merges the same values in the same order, so replicated results (lse, loss) are bitwise equal
on all ranks.

Why not an all-reduce: an all-reduce applies one fixed elementwise operation (SUM, MAX, ...)
to a fixed buffer. Summing S_r is only right once all ranks share the exponent, and that
common exponent is a MAX: a second reduction, which is exactly Megatron's two all-reduces
(the row maximum, then the sum of exp(x - max)). torch.distributed has no user-defined
reduction to merge pairs in one step, and an encoding that turns the merge into a plain SUM
(exp(lse_r - K) for an agreed K) overflows or underflows unless K is near the row maximum,
i.e. known beforehand. The all-gather moves world x k floats per row per rank where a
ring all-reduce would move about 2k; with k <= 6 and tensor-parallel world sizes that is tens
of bytes per row, against 4 x C/world bytes of logits: the step is latency-bound, and one
round beats two.

How exact the statistics are
----------------------------
A float32 lse_r stores the pair to 24 significant bits: an absolute error of |lse_r| * 2^-25,
which becomes the relative error of every probability of the row. For |lse_r| < 32 that is at
most 2^-20 (16 units of float32 roundoff), the level of the unsharded computation's own
rounding, and the pair goes as (c, d) = (0, lse_r). A shard whose |lse_r| >= 32 (logits far
from 0: x + 1e4, values near FLT_MAX) would lose the leading digits of its probabilities, so
its rows go as (c, d) = (row maximum, logsumexp(x - c)), lse_r = c + d, exact to the same level;
this costs 3R + 1W more over that shard (its maximum, x - c, and the logsumexp of that). The
merge is done in float64: ref = max_r c_r, G = logsumexp_r((c_r - ref) + d_r), lse = ref + G, and
x - lse is evaluated as (x - ref) - G, so softmax([3e38, 3e38 | 3e38]) over two ranks is
[1/3, 1/3 | 1/3], as it is unsharded.

Stated tolerance, what tests/test_distributed.py checks elementwise against the unsharded
computation in float64, with u the unit roundoff of the compute dtype (2^-24 for float32, 2^-53
for float64) and A = 64:
    probabilities (softmax)              |y - ref| <= (A + |x_i - lse|) u |ref|
    log values (log_softmax, lse, loss)  |y - ref| <= A u (1 + |ref|)
    gradients                            |g - ref| <= A u (|ref| + max |ref|)
(logsumexp's gradient exp(x - lse) also pays 2 |lse| u |ref|: its lse is rounded per shard and
once more to the output dtype; unsharded it pays |lse| u |ref|.) float16 and bfloat16 shards are
converted to float32 (a copy of the shard) and the results rounded back.

Special values follow docs/design.md and docs/cross_entropy.md, across shards: a NaN anywhere in
the row makes the whole row NaN on every rank (logsumexp NaN); +inf anywhere makes softmax and
log_softmax NaN (logsumexp +inf); an all -inf row gives NaN (logsumexp -inf); a shard that is all
-inf inside a finite row gets probabilities 0; an empty shard is allowed.

Traffic per forward, per shard: softmax and log_softmax 2R + 1W (lse pass, then one pass that
writes exp(x - lse) or x - lse); logsumexp 1R; cross_entropy 1R (+1R for label smoothing, +1R + 1W
for softcap); plus 3R + 1W when the shard takes the exact path above. The extra R of label
smoothing and the softcap pass are what the unsharded fused kernel saves; here torch computes
them.

Backward
--------
- logsumexp and cross_entropy: local, no collective. Their outputs are whole-row values,
  replicated on every rank; as in Megatron, the backward assumes the upstream gradient is the
  same on every rank (every rank computes the same loss from them) and gives each rank the
  gradient of its own shard: exp(x - lse) times the row's coefficient, minus the one-hot on the
  rank that owns the target.
- softmax and log_softmax: one all-reduce (SUM) of a per-row scalar, sum_j g_j y_j for softmax and
  sum_j g_j for log_softmax, over the whole row; so every rank of the group must run backward.
- linear_cross_entropy: the logits recomputed chunk by chunk (the second of its four matmuls
  per chunk), and one all-reduce (SUM) of the input's gradient, the input being replicated.
Double backward is not supported, nor torch.compile (the collectives run eagerly).

linear_cross_entropy's memory per rank: one (chunk, V_r) logits buffer in the forward; in
the backward that buffer and the chunk's gradient (two chunk-sized buffers; float16/bfloat16
add a float32 copy of the chunk), plus the gradients of the input and of the shard. Measured
(python tools/lce_dist_memory.py: 2 gloo ranks, N=2048, H=512,
V=32000, float32, default budget): 215 MB peak extra per rank, against 250 MB for
tpd.cross_entropy on the shard's whole (N, V_r) logits (125 MB of logits) and its gradient.

On CUDA tensors (NCCL) the forward reads a few flags back to the host (whether a shard takes
the exact path; which rows are ignored), a small synchronisation; on the CPU (gloo) these
are free. Without an initialised process group, or with a group of one rank, no collective
runs and the functions compute the unsharded result.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

import twopass
from twopass._cross_entropy import check_options, check_target_shape, legacy_reduction
from twopass.torch._tensors import class_indices

__all__ = ["cross_entropy", "linear_cross_entropy", "log_softmax", "logsumexp", "shard_offset", "softmax"]

# A shard whose local |logsumexp| reaches this is sent as (row maximum, lse(x - max)): below it a
# float32 lse carries the pair to 2^-20 absolute, the rounding level of the unsharded computation.
_EXACT_ABOVE = 32.0


_SHARD_DOC = """
    Parameters
    ----------
    x : Tensor
        This rank's slice of the input: the ranks of `group` hold, in rank order,
        consecutive slices of the axis `dim` (any sizes, empty allowed). float32,
        float64, float16 or bfloat16, on the CPU (gloo) or CUDA (NCCL).
    dim : int, default -1
        The sharded axis.
    group : ProcessGroup, optional, keyword-only
        The ranks that hold the slices (default: the world; with no process group
        initialised, one process computes the unsharded result).

    Raises
    ------
    TypeError
        `x` is not a tensor (or not floating point).
    ValueError
        `x` is 0-d.
    IndexError
        `dim` is out of range.
"""


def softmax(x: Tensor, dim: int = -1, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """This rank's slice of softmax(x) over the sharded axis `dim` (differentiable).

    One all-gather in forward, one all-reduce in backward.
    {shard}
    Returns
    -------
    Tensor
        Of x's shape, dtype and device: the whole row's softmax at this rank's positions.
    """
    return _Softmax.apply(x, _dim(x, dim, "softmax"), False, group)


def log_softmax(x: Tensor, dim: int = -1, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """This rank's slice of log_softmax(x) = x - logsumexp(x) over the sharded axis `dim`.

    One all-gather in forward, one all-reduce in backward (differentiable).
    {shard}
    Returns
    -------
    Tensor
        Of x's shape, dtype and device.
    """
    return _Softmax.apply(x, _dim(x, dim, "log_softmax"), True, group)


def logsumexp(x: Tensor, dim: int = -1, keepdim: bool = False, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """log(sum(exp(x))) over the sharded axis `dim`: the whole row's value, the same on
    every rank (differentiable).

    One all-gather in forward; the backward is local (each rank gets exp(x - lse) * g for
    its slice, g being the upstream gradient, assumed equal on every rank).
    {shard}
    Returns
    -------
    Tensor
        x's shape without `dim` (length 1 with `keepdim`), x's dtype and device.
    """
    return _LogSumExp.apply(x, _dim(x, dim, "logsumexp"), bool(keepdim), group)


_KEEPDIM_DOC = "    keepdim : bool, default False\n        Keep the reduced axis, with length 1.\n"
for _f in (softmax, log_softmax, logsumexp):
    if _f.__doc__:  # None under python -OO
        doc = _SHARD_DOC if _f is not logsumexp else _SHARD_DOC.replace("    group :", _KEEPDIM_DOC + "    group :")
        _f.__doc__ = _f.__doc__.replace("{shard}", doc)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    vocab_start: int | None = None,
    group: dist.ProcessGroup | None = None,
    return_z_loss: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Vocabulary-parallel cross-entropy, as defined in docs/cross_entropy.md.

    The arguments of ``torch.nn.functional.cross_entropy``, in its order, then the extras,
    keyword-only; each rank passes its shard of the class axis.

    Parameters
    ----------
    input : Tensor
        This rank's shard of the logits: shape (C_r,), (N, C_r) or (N, C_r, d1, ..., dK),
        the class axis being 1 (0 for (C_r,)); classes vocab_start .. vocab_start + C_r - 1.
    target : Tensor of int
        Global class indices (or `ignore_index`), the same on every rank: shape (), (N,)
        or (N, d1, ..., dK).
    weight : Tensor, optional
        Shape (C_r,): this rank's slice of the class weights, in step with the logits
        (the total sum of weights travels in the same all-gather).
    size_average, reduce : bool, optional
        Deprecated, as in torch: when either is given, they decide `reduction`.
    ignore_index, reduction ("mean" | "sum" | "none"), label_smoothing
        As in torch.
    z_loss : float >= 0, keyword-only
        Coefficient of ``lse**2`` added per row.
    softcap : float > 0, optional, keyword-only
        Replaces the logits by ``softcap * tanh(logits / softcap)`` first.
    vocab_start : int, optional, keyword-only
        The global index of this shard's first class. When None it is computed with
        `shard_offset`, one more (tiny) all-gather per call; pass it (or cache
        `shard_offset`'s answer) to keep the step at one collective.
    group : ProcessGroup, optional, keyword-only
        The ranks that hold the shards (default: the world).
    return_z_loss : bool, keyword-only
        Also return the z-loss term, reduced like the loss (for logging; no gradient).

    Returns
    -------
    Tensor or tuple
        The loss (and the z-loss term), the same on every rank: 0-d, or the target's
        shape for "none". One all-gather in forward; the backward is local.

    Raises
    ------
    TypeError
        `input` not floating point, `target` not of integers.
    ValueError
        Shapes that do not match as above; options out of range; a non-ignored target
        that no rank owns, on the CPU (on every rank, after the collective, so no rank
        hangs; on CUDA its row's loss and gradient are NaN).
    """
    name = "twopass.torch.distributed.cross_entropy"
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError(f"{name}: input must be a floating-point tensor, got {_typename(input)}")
    if not isinstance(target, Tensor) or not class_indices(target):
        raise TypeError(f"{name}: target must be an integer tensor, got {_typename(target)}")
    check_target_shape(name, tuple(input.shape), tuple(target.shape))
    logits = input.movedim(1, -1) if input.dim() > 2 else input  # the class axis last
    if weight is not None and (weight.shape != logits.shape[-1:] or not weight.is_floating_point()):
        raise ValueError(
            f"{name}: weight must be this rank's float slice of shape ({logits.shape[-1]},), "
            f"got {tuple(weight.shape)} {weight.dtype}"
        )
    reduction = legacy_reduction(size_average, reduce, reduction)
    label_smoothing, z_loss, cap = check_options(name, reduction, label_smoothing, z_loss, softcap)
    softcap = cap or None
    if vocab_start is None:
        vocab_start = shard_offset(logits.shape[-1], group=group, device=logits.device)
    opts = (int(ignore_index), reduction, float(label_smoothing), float(z_loss), softcap, int(vocab_start), group)
    loss, z = _CrossEntropy.apply(logits, target, weight, *opts)
    return (loss, z) if return_z_loss else loss


def linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    vocab_start: int | None = None,
    group: dist.ProcessGroup | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Vocabulary-parallel ``cross_entropy(linear(input, weight, bias), target)``: the
    weight sharded by rows (classes) across the ranks, no rank holding more than one chunk
    of its logits.

    Forward: the rows (tokens) in chunks (as `twopass.torch.linear_cross_entropy`, the same
    budget); per chunk this rank's logits h_c @ W_r.T (+ b_r), their per-row statistics
    (as `cross_entropy`'s), the buffer reused; then ONE all-gather of the statistics of all
    rows, merged into the loss on every rank. Backward: the chunks again, the logits
    recomputed once (as Cut Cross-Entropy does), their gradient from the merged lse, then
    grad_W_r += dlogits.T @ h_c, grad_b_r += dlogits.sum(0) and this rank's part of
    grad_h = dlogits @ W_r; the parts are summed by one all-reduce, so every rank gets the
    whole gradient of its (replicated) input.

    Parameters
    ----------
    input : Tensor
        (..., H), the same on every rank.
    weight : Tensor
        (V_r, H): this rank's rows of the head, classes vocab_start .. vocab_start + V_r - 1
        (uneven and empty shards allowed); the input's dtype and device.
    target : Tensor of int
        Global class indices or `ignore_index`, ``input.shape[:-1]``, the same on every rank.
    bias : Tensor, optional
        (V_r,): this rank's slice.
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As `twopass.torch.linear_cross_entropy` (docs/cross_entropy.md).
    vocab_start : int, optional
        This shard's first class; when None, `shard_offset` computes it (one more all-gather).
    group : ProcessGroup, optional
        The ranks that hold the shards (default: the world).
    chunk_size : int, optional
        Rows per chunk (default: the budget of `twopass.torch.linear_cross_entropy`).

    Returns
    -------
    Tensor
        The loss, the same on every rank: 0-d, or ``input.shape[:-1]`` for "none".

    Raises
    ------
    ValueError
        Shapes, dtypes or options that do not fit; on the CPU a non-ignored target no rank
        owns (on every rank, after the collective).
    """
    from ._linear_cross_entropy import _check, _chunk_rows

    name = "twopass.torch.distributed.linear_cross_entropy"
    eps, zc, cap = check_options(name, reduction, label_smoothing, z_loss, softcap)
    _check(name, input, weight, target, bias)
    if vocab_start is None:
        vocab_start = shard_offset(weight.shape[0], group=group, device=input.device)
    h = input.reshape(-1, input.shape[-1])
    chunk = _chunk_rows(name, chunk_size, max(1, weight.shape[0]), input.element_size(), max(1, h.shape[0]))
    opts = (int(ignore_index), reduction, eps, zc, cap or None, int(vocab_start), group, chunk)
    loss = _LinearCrossEntropy.apply(h, weight, bias, target.reshape(-1), *opts)
    return loss.view(target.shape) if reduction == "none" else loss


def shard_offset(size: int, *, group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu") -> int:
    """The start of this rank's shard along a sharded axis: the sum of `size` over the lower
    ranks of `group`.

    One all-gather of one integer per rank. Shard sizes rarely change, so call it once and
    pass the result as `vocab_start`.

    Parameters
    ----------
    size : int
        This rank's shard length.
    group : ProcessGroup, optional, keyword-only
        The ranks (default: the world).
    device : torch.device or str, default "cpu", keyword-only
        Where the collective runs (a CUDA device for NCCL).

    Returns
    -------
    int
        0 on rank 0 or without a process group.
    """
    world = _world(group)
    if world == 1:
        return 0
    sizes = _all_gather(torch.tensor([size], dtype=torch.int64, device=device), group, world)
    return int(sizes[: dist.get_rank(group)].sum())


# ----------------------------------------------------------------------------------
# Collectives and the pair merge.
# ----------------------------------------------------------------------------------
def _world(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _all_gather(t: Tensor, group: dist.ProcessGroup | None, world: int) -> Tensor:
    """The (world, *t.shape) stack of every rank's t, in rank order: one collective."""
    if world == 1:
        return t.unsqueeze(0)
    t = t.contiguous()
    # The concatenated form (gloo takes no other), viewed as the stack.
    out = t.new_empty((world * t.shape[0], *t.shape[1:]))
    # all_gather_single is torch >= 2.13's name for all_gather_into_tensor (which now warns).
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, t, group=group)
    return out.view(world, *t.shape)


def _all_reduce_sum(t: Tensor, group: dist.ProcessGroup | None, world: int) -> Tensor:
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _wide(x: Tensor) -> Tensor:
    """x in its compute dtype: float32 and float64 as they are, float16/bfloat16 as float32."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    if not x.is_floating_point():
        raise TypeError(f"twopass.torch.distributed: expected a floating-point tensor, got {x.dtype}")
    return x.float()


def _local_logsumexp(x: Tensor, dim: int) -> Tensor:
    """The shard's logsumexp over `dim` (kept as size 1) by the twopass kernels: the C++ one for
    CPU tensors, called directly (the custom op's dispatch adds nothing inside an autograd
    Function, and its first call imports torch._dynamo: seconds in every rank), the op
    (Triton, or torch) for others."""
    if x.device.type == "cpu":
        return twopass.logsumexp(x, axis=dim, keepdims=True)
    return torch.ops.twopass.logsumexp(x, dim, True)


def _local_pair(x: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """(c, d, x - c): c and d of the shapes of logsumexp(x, dim, keepdim=True), the shard's lse = c + d.

    c = 0 and d = lse when every finite |lse| < _EXACT_ABOVE (one pass; x - c is x itself);
    otherwise the rows beyond it take c = their maximum, and d = lse(x - c) is recomputed for
    the whole shard (3R + 1W more: such shards are rare, and usually far from 0 as a whole)."""
    d = _local_logsumexp(x, dim)
    c = torch.zeros_like(d)
    far = torch.isfinite(d) & (d.abs() >= _EXACT_ABOVE)
    if not far.any():
        return c, d, x
    c = torch.where(far, x.amax(dim, keepdim=True), c)
    xc = x - c
    return c, _local_logsumexp(xc, dim), xc


def _merge(c: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Gathered (world, rows) offsets and log-sums -> float64 (ref, G), the row's lse = ref + G.

    ref is the largest offset (0 unless some rank took the exact path), so (c - ref) is exact
    or negligible and G stays near the row's log-sum around ref. torch.logsumexp gives the
    special values: any NaN -> NaN, any +inf -> +inf, all -inf -> -inf."""
    c, d = c.double(), d.double()
    ref = c.amax(0)
    return ref, torch.logsumexp((c - ref) + d, 0)


def _centered(x: Tensor, ref: Tensor, g: Tensor, shifted: bool) -> Tensor:
    """x - lse as (x - ref) - G, a new tensor in x's dtype; ref, G broadcast against x.
    `shifted` says whether some ref is non-zero (else one pass, x - G)."""
    if not shifted:
        return x - g.to(x.dtype)
    return (x - ref.to(x.dtype)).sub_(g.to(x.dtype))


def _dim(x: Tensor, dim: int, name: str) -> int:
    if not isinstance(x, Tensor):
        raise TypeError(f"twopass.torch.distributed.{name}: expected a tensor, got {_typename(x)}")
    if x.dim() < 1:
        raise ValueError(f"twopass.torch.distributed.{name}: a 0-d tensor has no axis to shard")
    if not -x.dim() <= dim < x.dim():
        raise IndexError(f"twopass.torch.distributed.{name}: dim {dim} out of range for {x.dim()}-d input")
    return dim % x.dim()


def _typename(v: object) -> str:
    return f"{v.dtype} tensor" if isinstance(v, Tensor) else type(v).__name__


# ----------------------------------------------------------------------------------
# softmax / log_softmax.
# ----------------------------------------------------------------------------------
class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int, log: bool, group):
        world = _world(group)
        xw = _wide(x)
        c, d, _ = _local_pair(xw, dim)
        stats = _all_gather(torch.stack((c.reshape(-1), d.reshape(-1))), group, world)  # (world, 2, rows)
        ref, g = _merge(stats[:, 0], stats[:, 1])
        g = g.masked_fill(g == math.inf, math.nan)  # a +inf anywhere: NaN over the whole row
        y = _centered(xw, ref.view(c.shape), g.view(c.shape), bool(ref.any()))
        if not log:
            y.exp_()
        y = y.to(x.dtype)
        ctx.dim, ctx.log, ctx.group, ctx.world = dim, log, group, world
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        # softmax: dx = y * (g - sum(g * y)); log_softmax: dx = g - exp(y) * sum(g); the sums run
        # over the whole row, hence one all-reduce of a scalar per row.
        (y,) = ctx.saved_tensors
        wide = torch.promote_types(y.dtype, torch.float32)
        g, yw = grad.to(wide), y.to(wide)
        if ctx.log:
            s = _all_reduce_sum(g.sum(ctx.dim, keepdim=True), ctx.group, ctx.world)
            dx = g - yw.exp() * s
        else:
            s = _all_reduce_sum((g * yw).sum(ctx.dim, keepdim=True), ctx.group, ctx.world)
            dx = yw * (g - s)
        return dx.to(y.dtype), None, None, None


# ----------------------------------------------------------------------------------
# logsumexp.
# ----------------------------------------------------------------------------------
class _LogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int, keepdim: bool, group):
        # The float32 lse of each shard is enough here whatever its size: the result is an lse
        # itself, rounded to the same relative precision (no exact path needed).
        lse_r = _local_logsumexp(_wide(x), dim)
        stats = _all_gather(lse_r.reshape(-1), group, _world(group))  # (world, rows)
        lse = torch.logsumexp(stats.double(), 0).view(lse_r.shape).to(x.dtype)
        if not keepdim:
            lse = lse.squeeze(dim)
        ctx.dim, ctx.keepdim = dim, keepdim
        ctx.save_for_backward(x, lse)
        return lse

    @staticmethod
    def backward(ctx, grad: Tensor):
        # d lse / d x_i = exp(x_i - lse) with the whole row's lse: local to each shard, the same
        # op as the unsharded backward.
        x, lse = ctx.saved_tensors
        if x.device.type == "cpu" and ctx.dim == x.dim() - 1 and _fused_ok(x, None) and x.is_contiguous():
            # The C++ kernel: a = g, nothing subtracted (target -1 everywhere).
            rows = lse.numel()
            gw = grad.reshape(rows).double()
            zero = torch.zeros(rows, dtype=torch.float64)
            dx = _fused_grad(x.reshape(rows, -1), lse.reshape(rows), gw, zero, zero, torch.full((rows,), -1), None)
            return dx.view(x.shape), None, None, None
        if x.device.type != "cpu":
            dx = torch.ops.twopass.logsumexp_backward(grad.to(x.dtype), x, lse, ctx.dim, ctx.keepdim)
        else:
            if not ctx.keepdim:
                grad, lse = grad.unsqueeze(ctx.dim), lse.unsqueeze(ctx.dim)
            wide = torch.promote_types(x.dtype, torch.float32)
            dx = (x.to(wide) - lse.to(wide)).exp_().mul_(grad.to(wide)).to(x.dtype)  # one new tensor
        return dx, None, None, None


# ----------------------------------------------------------------------------------
# cross_entropy.
# ----------------------------------------------------------------------------------
def _fused_ok(x: Tensor, w: Tensor | None) -> bool:
    return x.dtype in (torch.float32, torch.float64) and x.stride(-1) == 1 and (w is None or w.is_contiguous())


def _fused_grad(x, lse, a, c, b, target, w) -> Tensor:
    """grad_j = a exp(x_j - lse) - c w_j - [j == target] b per row, by the C++ kernel
    (target -1: not on this rank; -2: an ignored row, all 0)."""
    import numpy as np

    from .. import _core, _dispatch

    # NumPy's allocation: large buffers go on huge pages (fewer first-touch faults).
    out_np = np.empty(tuple(x.shape), dtype=np.float32 if x.dtype == torch.float32 else np.float64)
    out = torch.from_numpy(out_np)
    f64 = [v.detach().double().contiguous().numpy() for v in (lse, a, c, b)]
    x_np = x.detach().numpy()
    _core.cross_entropy_grad(
        isa=_dispatch.isa_code(None),
        x=x_np,
        lse=f64[0],
        a=f64[1],
        c=f64[2],
        b=f64[3],
        target=target.to(torch.int64).contiguous().numpy(),
        weight=None if w is None else w.detach().numpy(),
        grad=out_np,
        threads=torch.get_num_threads(),  # as torch's ops (and twopass.torch's)
        stream=False,  # a fresh buffer (_arrays.streaming_stores)
        torch_team=True,  # on torch's OpenMP team (twopass.torch._eager.OPENMP_RUNTIME)
    )
    return out


def _shard_stats(x, t, w, ignore_index, eps, vocab_start):
    """This shard's per-row statistics of (rows, C_r) logits x' (the compute dtype): the
    columns for the all-gather [c, d, x'_t if owned, owned, (w_t if owned), (sum_j w_j (x'_j - c))],
    and (idx, owned, valid): the target's local index (0 where not owned), whether this rank
    owns it, whether the row counts."""
    rows, n_cls = x.shape
    c, d, xc = _local_pair(x, 1)
    valid = t != ignore_index
    local = t - vocab_start
    owned = valid & (local >= 0) & (local < n_cls)
    idx = torch.where(owned, local, 0)
    if n_cls:
        x_t = x.gather(1, idx[:, None]).squeeze(1).masked_fill(~owned, 0.0)
    else:
        x_t = x.new_zeros(rows)
    cols = [c.view(-1), d.view(-1), x_t, owned.to(x.dtype)]
    if w is not None:
        cols.append(w[idx].masked_fill(~owned, 0.0) if n_cls else x.new_zeros(rows))
    if eps > 0:  # sum_j w_j (x'_j - c) of this shard: around c, so that it overflows no sooner than x'
        cols.append(xc.sum(1) if w is None else torch.mv(xc, w))
    return cols, idx, owned, valid


def _loss_from_stats(s, rows, t, valid, weighted, eps, zc, reduction, shape):
    """The merge of the gathered (world, k, rows + 1) statistics (header column: class count,
    weight sum) into the loss: (loss, z_out, shifted, any_ignored, saved), `saved` the
    per-row float64 values the gradient needs: (ref, g, lse, w_t, s_ce, s_z, n_tot, w_tot)."""
    ref, g = _merge(s[:, 0, :rows], s[:, 1, :rows])
    n_tot, w_tot = s[:, 0, rows].sum(), s[:, 1, rows].sum()
    x_t = s[:, 2, :rows].sum(0)  # only the owner's entry is non-zero
    owners = s[:, 3, :rows].sum(0)
    w_t = s[:, 4, :rows].sum(0) if weighted else valid.double()
    bad = valid & (owners != 1)
    # One read-back for the flags the rest needs (free on the CPU).
    shifted, any_ignored, any_bad = (bool(v) for v in torch.stack((ref.any(), (~valid).any(), bad.any())).tolist())
    if any_bad and s.device.type == "cpu":
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"cross_entropy: target {int(t[i])} (row {i}) is outside [0, {int(n_tot)}) and is not ignore_index"
        )
    g = g.masked_fill((g == math.inf) | bad, math.nan)  # +inf in the row (or a bad target): NaN
    lse = ref + g

    ce = torch.zeros_like(lse)
    if eps < 1:
        ce = (1 - eps) * w_t * ((ref - x_t) + g)
    if eps > 0:
        # W lse - sum_j w_j x'_j = W G - sum_r (sum_j w_j (x'_j - c_r) + W_r (c_r - ref)), all near ref
        w_sum = s[:, -1, :rows] + s[:, 1, rows, None] * (s[:, 0, :rows] - ref)
        ce = ce + (eps / n_tot) * (w_tot * g - w_sum.sum(0))
    ce = ce.masked_fill(~valid, 0.0)  # ignored rows: 0, even when their logits are NaN
    z = (zc * lse.square()).masked_fill(~valid, 0.0) if zc > 0 else torch.zeros_like(lse)
    if reduction == "mean":
        s_ce, s_z = 1.0 / w_t.sum(), 1.0 / valid.sum().double()  # 0/0 = NaN when all are ignored
        z_out = z.sum() * s_z if zc > 0 else z.sum()
        loss = ce.sum() * s_ce + (z_out if zc > 0 else 0.0)
    else:
        s_ce = s_z = torch.ones((), dtype=torch.float64, device=s.device)
        z_out = z.sum() if reduction == "sum" else z.view(shape)
        loss = (ce + z).sum() if reduction == "sum" else (ce + z).view(shape)
    return loss, z_out, shifted, any_ignored, (ref, g, lse, w_t, s_ce, s_z, n_tot, w_tot)


def _row_coefficients(up, valid, eps, zc, saved):
    """Per row, float64: A (of p_j), B (of w_j) and T (at the target), times the upstream
    gradient `up` (0-d, or one per row), 0 on ignored rows (docs/cross_entropy.md, Gradient):
    A = s_ce ((1 - eps) w_t + (eps / C) W) + s_z 2 zc lse,  B = s_ce eps / C,  T = s_ce (1 - eps) w_t."""
    ref, g, lse, w_t, s_ce, s_z, n_tot, w_tot = saved
    g_ce, g_z = up * s_ce, up * s_z
    a = g_ce * ((1 - eps) * w_t + (eps / n_tot) * w_tot)
    if zc > 0:
        a = a + g_z * (2 * zc) * lse
    a = a.masked_fill(~valid, 0.0)
    b = (g_ce * (eps / n_tot)).expand(valid.shape).masked_fill(~valid, 0.0)
    t = (g_ce * (1 - eps) * w_t).expand(valid.shape).masked_fill(~valid, 0.0)
    return a, b, t


def _shard_grad(x, w, idx, owned, valid, ref, g, a, b, t, eps, softcap, shifted, any_ignored):
    """dx = (A p_j - B w_j - [j == target] T) (1 - (x'_j / c)^2 with softcap) of the
    (rows, C_r) shard x' (the compute dtype), in torch operations; a new tensor."""
    dx = _centered(x, ref[:, None], g[:, None], shifted).exp_().mul_(a.to(x.dtype)[:, None])
    if eps > 0:
        bx = b.to(x.dtype)[:, None]
        if w is None:
            dx.sub_(bx)
        else:
            dx.addcmul_(bx, w[None, :], value=-1.0)
    if dx.shape[1]:
        dx.scatter_add_(1, idx[:, None], -t.masked_fill(~owned, 0.0).to(x.dtype)[:, None])
    if any_ignored:
        dx.masked_fill_(~valid[:, None], 0.0)  # also where an ignored row's logits are NaN or +inf
    if softcap is not None:
        dx.mul_(1.0 - (x / softcap).square())  # d(c tanh(x / c))/dx = 1 - (x' / c)^2
    return dx


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, eps, zc, softcap, vocab_start, group):
        world = _world(group)
        n_cls = logits.shape[-1]
        rows = target.numel()
        x = _wide(logits).reshape(rows, n_cls)
        t = target.reshape(rows).to(x.device)
        if softcap is not None:
            x = torch.tanh(x / softcap).mul_(softcap)  # x' = c tanh(x / c), a new tensor
        w = None if weight is None else weight.to(device=x.device, dtype=x.dtype)

        # Local statistics, one column per row plus a header column (this shard's class count
        # and weight sum), packed into one (k, rows + 1) tensor for the single all-gather.
        cols, idx, owned, valid = _shard_stats(x, t, w, ignore_index, eps, vocab_start)
        packed = x.new_zeros((len(cols), rows + 1))
        packed[:, :rows] = torch.stack(cols)
        packed[0, rows], packed[1, rows] = n_cls, float(n_cls) if w is None else w.sum()

        s = _all_gather(packed, group, world).double()  # (world, k, rows + 1)
        loss, z_out, shifted, any_ignored, saved = _loss_from_stats(
            s, rows, t, valid, w is not None, eps, zc, reduction, target.shape
        )
        z_out = z_out.to(logits.dtype)
        ctx.mark_non_differentiable(z_out)
        ctx.opts = (reduction, eps, zc, softcap, shifted, any_ignored, logits.dtype, logits.shape)
        ctx.save_for_backward(x, w, idx, owned, valid, *saved[:6])
        ctx.totals = saved[6:]
        return loss.to(logits.dtype), z_out

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_z: Tensor):
        # Local: the gradient of this rank's shard, all times the upstream gradient.
        x, w, idx, owned, valid, *saved = ctx.saved_tensors
        reduction, eps, zc, softcap, shifted, any_ignored, dtype, shape = ctx.opts
        saved = (*saved, *ctx.totals)
        up = grad.double().reshape(-1) if reduction == "none" else grad.double()
        a, b, t = _row_coefficients(up, valid, eps, zc, saved)
        ref, g = saved[0], saved[1]
        if x.device.type == "cpu" and softcap is None and not shifted and _fused_ok(x, w):
            # The C++ kernel: exp(x - lse) in cache, the gradient written once (streamed).
            onehot = t.masked_fill(~owned, 0.0)
            tloc = torch.where(owned, idx, -1).masked_fill(~valid, -2)
            dx = _fused_grad(x, g, a, b, onehot, tloc, w)
        else:
            dx = _shard_grad(x, w, idx, owned, valid, ref, g, a, b, t, eps, softcap, shifted, any_ignored)
        return dx.to(dtype).view(shape), None, None, None, None, None, None, None, None, None


class _LinearCrossEntropy(torch.autograd.Function):
    """The chunk loop of linear_cross_entropy: forward (statistics, one all-gather, the loss)
    and backward (the logits recomputed, the gradients; one all-reduce of grad_h)."""

    @staticmethod
    def _chunks(h, w, b, softcap, chunk):
        """(start, stop, x') per chunk: this rank's soft-capped logits in the compute dtype,
        in one reused buffer (plus its float32 copy for float16/bfloat16)."""
        rows = h.shape[0]
        buf = h.new_empty((min(chunk, rows), w.shape[0]))
        for s in range(0, rows, chunk):
            e = min(rows, s + chunk)
            x = buf[: e - s]
            if b is None:
                torch.mm(h[s:e], w.t(), out=x)
            else:
                torch.addmm(b, h[s:e], w.t(), out=x)
            x = _wide(x)
            if softcap is not None:
                x = x.div_(softcap).tanh_().mul_(softcap)
            yield s, e, x

    @staticmethod
    def forward(ctx, h, w, b, t, ignore_index, reduction, eps, zc, softcap, vocab_start, group, chunk):
        world = _world(group)
        rows, n_cls = h.shape[0], w.shape[0]
        t = t.to(h.device)
        wide = torch.promote_types(h.dtype, torch.float32)
        packed = None
        valid_all = t != ignore_index
        for s, e, x in _LinearCrossEntropy._chunks(h, w, b, softcap, chunk):
            cols, _, _, _ = _shard_stats(x, t[s:e], None, ignore_index, eps, vocab_start)
            if packed is None:
                packed = x.new_zeros((len(cols), rows + 1))
            packed[:, s:e] = torch.stack(cols)
        if packed is None:  # no rows
            packed = h.new_zeros((4 + (eps > 0), rows + 1), dtype=wide)
        packed[0, rows], packed[1, rows] = n_cls, float(n_cls)

        st = _all_gather(packed, group, world).double()  # (world, k, rows + 1): the one collective
        loss, _, shifted, any_ignored, saved = _loss_from_stats(
            st, rows, t, valid_all, False, eps, zc, reduction, t.shape
        )
        ctx.opts = (ignore_index, reduction, eps, zc, softcap, vocab_start, group, chunk, shifted, any_ignored)
        ctx.save_for_backward(h, w, b, t, *saved[:6])
        ctx.totals = saved[6:]
        return loss.to(h.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, w, b, t, *saved = ctx.saved_tensors
        ignore_index, reduction, eps, zc, softcap, vocab_start, group, chunk, shifted, any_ignored = ctx.opts
        saved = (*saved, *ctx.totals)
        valid = t != ignore_index
        up = grad.double().reshape(-1) if reduction == "none" else grad.double()
        a, bb, tt = _row_coefficients(up, valid, eps, zc, saved)
        ref, g = saved[0], saved[1]
        local = t - vocab_start
        owned = valid & (local >= 0) & (local < w.shape[0])
        idx = torch.where(owned, local, 0)
        gh = torch.empty_like(h, memory_format=torch.contiguous_format)
        gw = torch.zeros_like(w, memory_format=torch.contiguous_format)
        gb = None if b is None else torch.zeros(w.shape[0], dtype=_wide(h[:0]).dtype, device=h.device)
        for s, e, x in _LinearCrossEntropy._chunks(h, w, b, softcap, chunk):
            r = slice(s, e)
            dx = _shard_grad(
                x,
                None,
                idx[r],
                owned[r],
                valid[r],
                ref[r],
                g[r],
                a[r],
                bb[r],
                tt[r],
                eps,
                softcap,
                shifted,
                any_ignored,
            ).to(h.dtype)
            torch.mm(dx, w, out=gh[r])
            gw.addmm_(dx.t(), h[r])
            if gb is not None:
                gb += dx.sum(0, dtype=gb.dtype)
        gh = _all_reduce_sum(gh, group, _world(group))  # the input is replicated: its gradient is the sum
        return gh, gw, None if gb is None else gb.to(h.dtype), None, None, None, None, None, None, None, None, None
