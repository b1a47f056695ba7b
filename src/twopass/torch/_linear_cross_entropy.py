"""twopass.torch.linear_cross_entropy: ``cross_entropy(linear(input, weight, bias), target)``
without the (tokens, vocabulary) logits.

The rows (tokens) are cut into chunks; one (chunk, V) buffer is reused for every chunk:

    buf      = h_c @ W.T (+ b)                    the chunk's logits
    buf      <- d loss / d logits, in place        the fused CE kernel (twopass.torch's
                                                  cross_entropy, reduction "sum" or "none")
    grad_h_c = buf @ W
    grad_W  += buf.T @ h_c                         addmm in a fixed chunk order
    grad_b  += buf.sum(0)

So the gradients come out of the forward (three matmuls, as the unfused form) and the
largest tensor alive besides the inputs and gradients is one chunk of logits. For the
reductions "mean" and "sum" the backward only scales the stored gradients by the upstream
gradient (a scalar). For "none" the upstream gradient is one value per row, which cannot
be applied to grad_W afterwards: there the forward computes only the loss, and the
backward runs the loop again with each chunk's gradient rows scaled by the upstream
gradient before the two matmuls (four matmuls in all: the logits are recomputed once).

Chunk size: `chunk_size` rows when given; else the rows whose logits fit in a budget of
TWOPASS_LCE_CHUNK_BYTES bytes (default 64 MiB), a multiple of 64 rows (of 8 below 64),
at least one.

Precision: the matmuls run in the input's dtype (torch's own rule for F.linear); the
cross-entropy in float32 inside the kernel (float64 stays float64), which reads and writes
the chunk in its dtype. grad_b is summed in float32. grad_W is accumulated in the weight's
dtype, one rounding per chunk: for bfloat16/float16 a larger budget means fewer roundings.

Devices: CPU tensors run the C++ kernels, CUDA tensors torch's matmuls and the Triton
kernels, through the same loop. Every chunk is done in the same order by the same
operations, so the gradients are bitwise equal from run to run on a given machine and
thread count (no atomics).

One custom op (`twopass::linear_cross_entropy`) does the forward and, for "none", one
(`twopass::linear_cross_entropy_rows_backward`) the backward: both opaque to
torch.compile, which traces them with their fake (shape-only) implementations.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .._cross_entropy import check_options
from ._cross_entropy import _compute
from ._tensors import class_indices

__all__ = ["LinearCrossEntropy", "linear_cross_entropy"]

DEFAULT_CHUNK_BYTES = 64 << 20


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
    return_lse: bool = False,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``cross_entropy(linear(input, weight, bias), target)`` one chunk of rows at a time,
    the gradients computed in the forward; the (tokens, V) logits never exist.

    Parameters
    ----------
    input : Tensor
        (..., H) hidden states, float32, float64, float16 or bfloat16, CPU or CUDA.
    weight : Tensor
        (V, H), as for ``torch.nn.functional.linear``; the input's dtype and device.
    target : Tensor of int
        Class indices in [0, V) or `ignore_index`, of shape ``input.shape[:-1]``.
    bias : Tensor, optional
        (V,).
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
    z_loss : float >= 0, default 0.0
        Coefficient of ``lse**2`` added per row.
    softcap : float > 0, optional
        Replaces the logits by ``softcap * tanh(logits / softcap)`` first.
        (The loss and its options are those of docs/cross_entropy.md, without class weights.)
    return_lse : bool, default False
        Also return the per-row logsumexp (of the soft-capped logits), without gradient.
    chunk_size : int, optional
        Rows per chunk. By default the rows whose logits fit in TWOPASS_LCE_CHUNK_BYTES
        bytes (64 MiB unless that environment variable says otherwise).

    Returns
    -------
    Tensor or (Tensor, Tensor)
        The loss, of the input's dtype: 0-d, or ``input.shape[:-1]`` for "none"; with
        `return_lse` also the lse, float32 (float64 for float64), ``input.shape[:-1]``.

    Raises
    ------
    ValueError
        Shapes, dtypes or devices that do not match; an unknown `reduction`;
        `label_smoothing`, `z_loss`, `softcap` or `chunk_size` out of range; on the CPU, a
        target outside [0, V) that is not `ignore_index`.
    """
    name = "twopass.torch.linear_cross_entropy"
    eps, zc, cap = check_options(name, reduction, label_smoothing, z_loss, softcap)
    _check(name, input, weight, target, bias)
    lead = input.shape[:-1]
    h = input.reshape(-1, input.shape[-1])
    t = target.reshape(-1)
    chunk = _chunk_rows(name, chunk_size, weight.shape[0], input.element_size(), h.shape[0])
    grads = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (input, weight, bias))
    opts = (int(ignore_index), reduction, eps, zc, cap, chunk)
    loss, lse, *_ = torch.ops.twopass.linear_cross_entropy(h, weight, t, bias, *opts, grads and reduction != "none")
    if reduction == "none":
        loss = loss.reshape(lead)
    return (loss, lse.detach().reshape(lead)) if return_lse else loss


class LinearCrossEntropy(torch.nn.Module):
    """A vocabulary head and its loss in one: the module form of `linear_cross_entropy`,
    holding ``weight`` (V, H) and, with ``bias=True``, ``bias`` (V,), initialised as
    ``torch.nn.Linear(H, V)``; ``forward(input, target)`` returns the loss (and the lse
    with ``return_lse=True``). The keyword options are those of the function."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = False,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        return_lse: bool = False,
        chunk_size: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        lin = torch.nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.weight = lin.weight
        self.bias = lin.bias
        self.options = dict(
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            return_lse=return_lse,
            chunk_size=chunk_size,
        )

    def forward(self, input: Tensor, target: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return linear_cross_entropy(input, self.weight, target, self.bias, **self.options)

    def extra_repr(self) -> str:
        v, h = self.weight.shape
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"in_features={h}, num_classes={v}, bias={self.bias is not None}, {opts}"


def _check(name, input, weight, target, bias) -> None:
    if input.dim() < 1 or weight.dim() != 2 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{name}: input (..., H) and weight (V, H) expected, got {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(f"{name}: target has shape {tuple(target.shape)}, expected {tuple(input.shape[:-1])}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
    if not input.dtype.is_floating_point or not class_indices(target):
        raise ValueError(f"{name}: floating-point input and integer targets expected")
    for x in (weight, bias):
        if x is not None and (x.dtype != input.dtype or x.device != input.device):
            raise ValueError(f"{name}: weight and bias must have the input's dtype and device")


def _chunk_rows(name: str, chunk_size: int | None, v: int, item: int, n: int) -> int:
    """Rows per chunk: `chunk_size`, or the rows of logits that fit the budget, rounded down
    to a multiple of 64 (of 8 below 64: whole blocks for the matmuls)."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    budget = int(os.environ.get("TWOPASS_LCE_CHUNK_BYTES", DEFAULT_CHUNK_BYTES))
    rows = budget // max(1, v * item)
    rows = rows // 64 * 64 if rows >= 64 else rows // 8 * 8 if rows >= 8 else max(1, rows)
    return max(1, min(rows, n))


# ----------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------
def _loop(h, w, t, b, ignore_index, reduction, eps, zc, cap, chunk, grads, g_rows=None, ce=_compute):
    """Over the chunks of rows: (loss rows or sum, lse) and, when `grads`, the gradients
    (grad_h, grad_W, grad_b or None) for the loss summed over rows, or, with `g_rows`, for
    sum_i g_i loss_i. `ce` is the per-chunk fused kernel (_compute; tests pass the Triton
    one on CPU tensors under the interpreter)."""
    n, hdim = h.shape
    v = w.shape[0]
    h = h if h.is_contiguous() else h.contiguous()
    t = t.to(torch.int64)
    red = "none" if reduction == "none" else "sum"
    buf = h.new_empty((min(chunk, n), v))
    wt = w.t()
    wide = torch.promote_types(h.dtype, torch.float32)
    losses, lses = [], []
    gh = torch.empty_like(h) if grads else None
    gw = torch.zeros_like(w, memory_format=torch.contiguous_format) if grads else None
    gb = torch.zeros(v, dtype=wide, device=h.device) if grads and b is not None else None
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x = buf[: e - s]
        hc = h[s:e]
        if b is None:
            torch.mm(hc, wt, out=x)
        else:
            torch.addmm(b, hc, wt, out=x)
        loss, _, lse = ce(x, t[s:e], None, ignore_index, red, eps, zc, cap, x if grads else None)
        losses.append(loss.to(wide))  # (the chunks' sums added in float32 at least)
        lses.append(lse)
        if not grads:
            continue
        if g_rows is not None:
            x.mul_(g_rows[s:e, None].to(x.dtype))
        torch.mm(x, w, out=gh[s:e])
        gw.addmm_(x.t(), hc)
        if gb is not None:
            gb += x.sum(0, dtype=wide)
    if not lses:  # no rows
        return h.new_zeros((0,) if reduction == "none" else (), dtype=wide), h.new_empty(0, dtype=wide), gh, gw, gb
    loss = torch.cat(losses) if reduction == "none" else torch.stack(losses).sum()
    return loss, torch.cat(lses), gh, gw, gb


def _mean_scales(t: Tensor, ignore_index: int, dtype) -> tuple[Tensor, Tensor]:
    """1 / (rows not ignored) for the loss (NaN when all are ignored, 0/0, as torch) and
    for the gradients (which are all 0 then, as torch's), on the device."""
    n = (t != ignore_index).sum().to(dtype)
    return 1 / n, 1 / n.clamp(min=1)


# ----------------------------------------------------------------------------------
# Custom ops.
# ----------------------------------------------------------------------------------
@torch.library.custom_op("twopass::linear_cross_entropy", mutates_args=())
def _lce(
    h: Tensor,
    w: Tensor,
    t: Tensor,
    b: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    chunk: int,
    grads: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    loss, lse, gh, gw, gb = _loop(h, w, t, b, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk, grads)
    if reduction == "mean":
        scale, g_scale = _mean_scales(t, ignore_index, loss.dtype if loss.dtype == torch.float64 else torch.float32)
        loss = loss * scale
        if grads:
            for g in (gh, gw, gb):
                if g is not None:
                    g.mul_(g_scale.to(g.dtype))
    return (
        loss.to(h.dtype).contiguous(),
        lse.contiguous(),
        gh if grads else h.new_empty(0),  # (outputs may not alias: one empty each)
        gw if grads else h.new_empty(0),
        gb.to(h.dtype) if gb is not None else h.new_empty(0),
    )


@_lce.register_fake
def _(h, w, t, b, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk, grads):
    n = h.shape[0]
    lse_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    return (
        h.new_empty((n,) if reduction == "none" else ()),
        h.new_empty((n,), dtype=lse_dtype),
        torch.empty_like(h, memory_format=torch.contiguous_format) if grads else h.new_empty(0),
        torch.empty_like(w, memory_format=torch.contiguous_format) if grads else h.new_empty(0),
        b.new_empty(b.shape) if grads and b is not None else h.new_empty(0),
    )


@torch.library.custom_op("twopass::linear_cross_entropy_rows_backward", mutates_args=())
def _lce_rows_backward(
    h: Tensor,
    w: Tensor,
    t: Tensor,
    b: Tensor | None,
    g: Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """reduction "none": the gradients of sum_i g_i loss_i, the logits recomputed."""
    _, _, gh, gw, gb = _loop(h, w, t, b, ignore_index, "none", label_smoothing, z_loss, softcap, chunk, True, g_rows=g)
    return gh, gw, gb.to(h.dtype) if gb is not None else h.new_empty(0)


@_lce_rows_backward.register_fake
def _(h, w, t, b, g, ignore_index, label_smoothing, z_loss, softcap, chunk):
    return (
        torch.empty_like(h, memory_format=torch.contiguous_format),
        torch.empty_like(w, memory_format=torch.contiguous_format),
        b.new_empty(b.shape) if b is not None else h.new_empty(0),
    )


def _setup(ctx, inputs, output) -> None:
    h, w, t, b, ignore_index, reduction, eps, zc, cap, chunk, grads = inputs
    ctx.set_materialize_grads(False)
    ctx.opts = (ignore_index, eps, zc, cap, chunk)
    ctx.reduction = reduction
    ctx.has_bias = b is not None
    if reduction == "none":
        ctx.save_for_backward(h, w, t, b)
    else:
        ctx.save_for_backward(*output[2:])


def _backward(ctx, g_loss, g_lse, *g_grads):
    n_in = 11
    if g_loss is None:
        return (None,) * n_in
    if ctx.reduction == "none":
        h, w, t, b = ctx.saved_tensors
        ignore_index, eps, zc, cap, chunk = ctx.opts
        gh, gw, gb = torch.ops.twopass.linear_cross_entropy_rows_backward(
            h, w, t, b, g_loss.reshape(-1), ignore_index, eps, zc, cap, chunk
        )
    else:
        gh, gw, gb = ctx.saved_tensors
        if not (
            gh.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and g_loss.item() == 1.0  # the usual step: the stored gradients are the answer
        ):
            gh, gw, gb = (x * g_loss.to(x.dtype) for x in (gh, gw, gb))
    return (
        gh if ctx.needs_input_grad[0] else None,
        gw if ctx.needs_input_grad[1] else None,
        None,
        gb if ctx.has_bias and ctx.needs_input_grad[3] else None,
    ) + (None,) * (n_in - 4)


_lce.register_autograd(_backward, setup_context=_setup)
