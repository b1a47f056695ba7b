"""twopass.torch.cross_entropy: the fused loss of docs/cross_entropy.md with autograd.

The forward computes the loss and, when the logits need a gradient, the gradient too
(for an upstream gradient of 1), in the same call: one read of the logits from memory,
the second pass over each row from cache. The backward only scales that stored gradient
by the upstream gradient. By default into a new tensor (the graph stays reusable:
retain_graph, gradcheck); with `inplace_backward=True` in place, where on CUDA a kernel
reads the scalar on the device and returns at once when it is 1 (the usual training
step). Nothing synchronises with the host, so the step is CUDA-graph capturable.

- CPU tensors: the C++ kernels (`twopass.cross_entropy`). CUDA float32/float16/bfloat16:
  the Triton kernels of `twopass.triton.cross_entropy`. CUDA float64: torch operations.
- `inplace_backward=True` writes the gradient over the logits (peak extra memory
  O(tokens), and no copy in the backward; the graph can then be run backward once).
  Autograd knows: the logits are marked dirty, so an op that saved them for its own
  backward raises torch's "modified by an inplace operation" error instead of
  silently using the gradient as its input. The default never writes to the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _core
from .._cross_entropy import check_options, check_target_shape, legacy_reduction
from . import _eager
from ._eager import _FWD_BYTES as _BYTES
from ._eager import _ISA, _PLAIN, _is_compiling, _new_output, _threads, check_strided, eager_ok
from ._tensors import class_indices

__all__ = ["cross_entropy"]


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
    return_z_loss: bool = False,
    return_lse: bool = False,
    inplace_backward: bool = False,
) -> Tensor | tuple[Tensor, ...]:
    """Cross-entropy of logits against class indices, differentiable, fused with its
    gradient.

    The arguments of ``torch.nn.functional.cross_entropy``, in its order, then twopass's
    extras, keyword-only; definitions in docs/cross_entropy.md.

    Parameters
    ----------
    input : Tensor
        Logits, float32, float64, float16 or bfloat16, on the CPU or a CUDA device:
        shape (C,), (N, C) or (N, C, d1, ..., dK), the class axis being 1 (0 for (C,)).
    target : Tensor of int
        Class indices in [0, C) or `ignore_index`: shape (), (N,) or (N, d1, ..., dK).
        (Class probabilities as targets are not supported.)
    weight : Tensor, optional
        (C,) weights of the classes.
    size_average, reduce : bool, optional
        Deprecated, as in torch: when either is given, they decide `reduction`.
    ignore_index : int, default -100
        Targets with this value count for nothing.
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
    z_loss : float >= 0, keyword-only
        Coefficient of ``lse**2`` added per row.
    softcap : float > 0, optional, keyword-only
        Replaces the logits by ``softcap * tanh(logits / softcap)`` first.
    return_z_loss, return_lse : bool, keyword-only
        Also return the z-loss term (reduced like the loss) and the per-row logsumexp;
        they carry no gradient (they are for logging).
    inplace_backward : bool, keyword-only
        Write the gradient over the logits' storage (no (N, C) buffer of its own; the
        graph can then be run backward once). For (N, C, d1, ...) logits the class axis
        is moved last first, a copy, which then holds the gradient instead.

    Returns
    -------
    Tensor or tuple
        The loss, of the logits' dtype: 0-d, or the target's shape for "none"; or a
        tuple ``(loss, z_loss?, lse?)`` with the requested extras.

    Raises
    ------
    TypeError
        A target not of integers (float or bool); on the CPU, logits of another dtype.
    ValueError
        Shapes that do not match as above; an unknown `reduction`; `label_smoothing`,
        `z_loss` or `softcap` out of range; on the CPU, a target outside [0, C) that is
        not `ignore_index`.
    """
    name = "twopass.torch.cross_entropy"
    if size_average is not None or reduce is not None:
        reduction = legacy_reduction(size_average, reduce, reduction)
    eps, zc, cap = check_options(name, reduction, label_smoothing, z_loss, softcap)
    if weight is None and not (inplace_backward or return_z_loss or return_lse or _is_compiling()):
        # (N, C) logits, (N,) int64 targets: the loss in one C++ call (None: not taken)
        loss = _eager_loss(input, target, ignore_index, _REDUCTION[reduction], eps, zc, cap, False)
        if loss is not None:  # (False: the same, but the logits need a gradient)
            return (
                _eager.ce_apply(input, target, None, ignore_index, reduction, eps, zc, cap, False)
                if loss is False
                else loss
            )
    check_strided(name.removeprefix("twopass.torch."), input, target)
    nd = input.dim()
    # (the common (N, C) logits with (N,) targets checked inline: ~1.5 us a call)
    if not (nd == 2 and target.dim() == 1 and target.shape[0] == input.shape[0]):
        check_target_shape(name, tuple(input.shape), tuple(target.shape))
    # Rows of classes: (C,) is one row; (N, C, d1.., dK) moves the class axis last (a copy).
    if nd == 1:
        logits = input.unsqueeze(0)
    elif nd == 2:
        logits = input
    else:
        logits = input.movedim(1, -1).reshape(-1, input.shape[1])
    rows_shape = target.shape
    target = target if target.dim() == 1 else target.reshape(-1)
    opts = (int(ignore_index), reduction, eps, zc, cap)
    need_grad = torch.is_grad_enabled() and input.requires_grad
    if not inplace_backward and _direct_ok(logits, target, weight):
        # The eager path: no custom op, the kernel straight on the tensors' memory; the
        # z-loss and lse tensors only when asked for (an allocation is ~0.7 us).
        extras = return_z_loss or return_lse
        if need_grad:
            out = _eager.ce_apply(logits, target, weight, *opts, extras)
        else:
            out = _direct(logits, target, weight, *opts, None, extras)
        loss, z, lse = out if extras else (out, None, None)
    else:
        # (the eager path takes int64 targets only; the others are checked here, once:
        # a float or bool target would otherwise be cast to indices)
        if not class_indices(target):
            raise TypeError(
                f"{name}: target must hold integer class indices, got dtype {target.dtype} "
                "(class probabilities as targets are not supported)"
            )
        if inplace_backward and need_grad:
            if logits.is_contiguous() and _direct_ok(logits, target, weight):
                loss, z, lse, _ = _inplace_apply(logits, target, weight, *opts)
            else:
                loss, z, lse, _ = _InPlace.apply(logits, target, weight, *opts)
        else:
            loss, z, lse, _ = torch.ops.twopass.cross_entropy(logits, target, weight, *opts, need_grad)
    if reduction == "none":
        loss = loss.reshape(rows_shape)
        z = z if z is None else z.reshape(rows_shape)
    extras = ([z.detach()] if return_z_loss else []) + ([lse.detach().reshape(rows_shape)] if return_lse else [])
    return (loss, *extras) if extras else loss


# ----------------------------------------------------------------------------------
# The computation, per device: (loss, z_loss, lse) and the gradient written into `grad`.
# ----------------------------------------------------------------------------------
def _compute(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad):
    if logits.device.type == "cpu":
        return _cpu(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad)
    if logits.device.type == "cuda" and logits.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return _triton(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad)
    return _torch_ops(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad)


def _direct_ok(logits, target, weight) -> bool:
    """The eager path applies: plain float32/float64/float16/bfloat16 CPU logits outside
    any tracing (_eager.eager_ok), int64 targets, a weight of the logits' dtype or none."""
    return (
        eager_ok(logits)
        and logits.numel() > 0
        and type(target) in _PLAIN
        and target.dtype is torch.int64
        and target.is_cpu
        and (
            weight is None
            or (
                type(weight) in _PLAIN
                and weight.is_cpu
                and weight.dtype is logits.dtype
                and weight.dim() == 1
                and not weight.requires_grad
            )
        )
    )


def _direct(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad, extras=True, stream=False):
    """(loss, z_loss, lse) of float32/float64/float16/bfloat16 CPU (rows, C) logits in
    one C++ call (_core.cross_entropy_ptr: target check, scales, kernel, reduction), the
    gradient written into `grad` when given; the loss alone when not `extras`. The
    custom op's CPU implementation runs it too, so both paths give the same values.
    Halves are computed in float32: their weight is converted to it, lse is float32."""
    rows, n = logits.shape
    if logits.is_contiguous():  # (the usual case, without two stride() calls)
        x, xs = logits, n
    else:
        x = logits if logits.stride(-1) == 1 else logits.contiguous()
        xs = x.stride(0)
    t = target if target.is_contiguous() else target.contiguous()
    ctype = torch.float64 if x.dtype is torch.float64 else torch.float32
    if weight is not None:
        if weight.shape[0] != n:
            raise ValueError(f"twopass.cross_entropy: weight has shape {tuple(weight.shape)}, expected ({n},)")
        weight = weight.to(ctype).contiguous()
    shape = (rows,) if reduction == "none" else ()
    loss = x.new_empty(shape)
    z, lse = (x.new_empty(shape), x.new_empty(rows, dtype=ctype)) if extras else (None, None)
    _core.cross_entropy_ptr(
        _ISA,
        _RELOAD if grad is not None else _TWO_PASS,  # as twopass.cross_entropy's "auto"
        _BYTES[x.dtype],
        x.data_ptr(),
        rows,
        n,
        xs,
        t.data_ptr(),
        0 if weight is None else weight.data_ptr(),
        ignore_index,
        eps,
        zc,
        cap,
        _REDUCTION[reduction],
        0 if grad is None else grad.data_ptr(),
        0 if grad is None else grad.stride(0),
        loss.data_ptr(),
        z.data_ptr() if extras else 0,
        lse.data_ptr() if extras else 0,
        _threads(),
        stream,  # grad fresh (_new_grad) or the logits: normal stores; pages _alloc gave back: streamed
        x.dtype is torch.bfloat16,
        True,  # on torch's OpenMP team (_eager.OPENMP_RUNTIME)
    )
    return (loss, z, lse) if extras else loss


_REDUCTION = {"mean": 0, "sum": 1, "none": 2}
# _direct's work for the loss alone (or with the gradient of small logits), with the
# checks of _direct_ok, in C++ (csrc/torch_eager.cpp): one row of 1024 float32 logits
# without a gradient, Zen 1 VM, 20.2 -> 10.4 us (torch 9.4-10.5).
_eager_loss = _core.eager_cross_entropy
_RELOAD, _TWO_PASS = _core.ALGO_CODES["three_pass_reload"], _core.ALGO_CODES["two_pass"]


def ce_fwd(logits, target, weight, ignore_index, reduction, eps, zc, cap, extras):
    """(out, gradient for an upstream gradient of 1): the forward of the autograd Function
    and of the C++ node (_node.py), grad mode off; out is the loss, or (loss, z, lse)."""
    out = None
    if weight is None and not extras:  # small logits: loss and gradient in one C++ call
        out = _eager_loss(logits, target, ignore_index, _REDUCTION[reduction], eps, zc, cap, True)
    if out is None:
        grad, stream = _new_grad(logits)
        return _direct(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad, extras, stream), grad
    return out


def ce_bwd(grad, g_loss):
    """The gradient of the logits for an upstream gradient g_loss of the loss (the
    Function's and the node's backward)."""
    if g_loss.dim() == 0 and not torch.is_grad_enabled() and g_loss.item() == 1.0:
        return grad  # the usual step: the stored gradient is the answer (see _backward)
    return torch.ops.twopass.cross_entropy_backward(grad, g_loss)


class _Eager(torch.autograd.Function):
    """The eager path with a gradient: the forward writes it (for an upstream gradient
    of 1), the backward scales it (the custom op's _backward, without the op). Until the
    C++ node (_eager.use_node) is loaded."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, eps, zc, cap, extras):
        out, grad = ce_fwd(logits, target, weight, ignore_index, reduction, eps, zc, cap, extras)
        if extras:
            ctx.mark_non_differentiable(*out[1:])
        ctx.set_materialize_grads(False)
        # Saved, not kept as a ctx attribute: autograd releases saved tensors once this
        # node has run (without retain_graph), before the leaf's AccumulateGrad, which
        # can then take the returned gradient as .grad instead of copying it (a fresh
        # (N, C) buffer: 2048x32000 float32, 1 thread, 213 -> see the README).
        ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, g_loss, *g_extras):
        (grad,) = ctx.saved_tensors
        dx = None if g_loss is None else ce_bwd(grad, g_loss)
        return dx, None, None, None, None, None, None, None, None


# Function.apply's Python half only matters under functorch, which eager_ok rules out.
# The C++ node replaces it once loaded (_eager.use_node): callers use _eager.ce_apply.
function_ce_apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, _Eager)


def _cpu(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad):
    if logits.dtype not in _BYTES:  # (the kernels would read other dtypes' bits as floats)
        raise TypeError(
            f"twopass.torch.cross_entropy: unsupported logits dtype {logits.dtype}; "
            "expected float32, float64, float16 or bfloat16"
        )
    if logits.numel() > 0:
        return _direct(logits, target.to(torch.int64), weight, ignore_index, reduction, eps, zc, cap, grad)
    import twopass

    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    loss, z, lse = twopass.cross_entropy(
        x,
        target.to(torch.int64),
        weight=None if weight is None else weight.to(torch.float64 if x.dtype == torch.float64 else torch.float32),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=eps,
        z_loss=zc,
        softcap=cap or None,
        return_z_loss=True,
        return_lse=True,
        grad_out=grad,
    )[:3]
    return loss, z, lse


def _scales(target, weight, ignore_index, reduction, dtype):
    """[s_ce, s_z] on the target's device, without reading anything on the host."""
    if reduction != "mean":
        return torch.ones(2, dtype=dtype, device=target.device)
    valid = target != ignore_index
    n_valid = valid.sum().to(dtype)
    if weight is None:
        wt_sum = n_valid
    else:
        wt_sum = torch.where(valid, weight.to(dtype)[target.clamp(0, weight.numel() - 1)], 0).sum()
    return torch.stack([1 / wt_sum, 1 / n_valid])


def _reduce(ce, z, scale, reduction):
    if reduction == "none":
        return ce + z, z
    if reduction == "sum":
        return ce.sum() + z.sum(), z.sum()
    zs = z.sum() * scale[1]
    return ce.sum() * scale[0] + zs, zs


def _triton(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad):
    from ..triton import cross_entropy as k  # imports triton: only when a CUDA tensor comes

    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    scale = _scales(target, weight, ignore_index, reduction, torch.float32)
    ce, z, lse = k.cross_entropy_forward(
        x,
        target,
        None if weight is None else weight.to(torch.float32).contiguous(),
        scale,
        ignore_index=ignore_index,
        label_smoothing=eps,
        z_loss=zc,
        softcap=cap or None,
        grad=grad,
    )
    loss, zs = _reduce(ce, z, scale, reduction)
    return loss.to(logits.dtype), zs.to(logits.dtype), lse


def _torch_ops(logits, target, weight, ignore_index, reduction, eps, zc, cap, grad):
    """The same definition in torch operations (CUDA float64, other devices)."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if cap:
        x = cap * torch.tanh(x / cap)
    C = x.shape[1]
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    w = torch.ones(C, dtype=x.dtype, device=x.device) if weight is None else weight.to(x.dtype)
    lse = torch.logsumexp(x, 1)
    wt = w[t]
    ce = (1 - eps) * wt * (lse - x.gather(1, t[:, None])[:, 0])
    if eps > 0:
        ce = ce + eps / C * (w.sum() * lse - (x * w).sum(1))
    ce = torch.where(valid, ce, 0)
    z = torch.where(valid, zc * lse * lse, 0) if zc > 0 else torch.zeros_like(lse)
    scale = _scales(target, weight, ignore_index, reduction, x.dtype)
    if grad is not None:
        p = torch.exp(x - lse[:, None])
        A = scale[0] * ((1 - eps) * wt + eps / C * w.sum()) + scale[1] * 2 * zc * lse
        d = A[:, None] * p - scale[0] * eps / C * w
        d = d.scatter_add(1, t[:, None], (-scale[0] * (1 - eps) * wt)[:, None])
        if cap:
            d = d * (1 - (x / cap) ** 2)
        grad.copy_(torch.where(valid[:, None], d, 0))
    loss, zs = _reduce(ce, z, scale, reduction)
    return loss.to(logits.dtype), zs.to(logits.dtype), lse.to(torch.promote_types(logits.dtype, torch.float32))


# ----------------------------------------------------------------------------------
# Custom ops.
# ----------------------------------------------------------------------------------
def _out_shapes(logits, reduction):
    n = logits.shape[0]
    lead = [n] if reduction == "none" else []
    lse_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return lead, lse_dtype


def _new_grad(logits: Tensor) -> tuple[Tensor, bool]:
    """An empty (N, C) gradient, and whether to stream into it; on the CPU a large one on
    2 MiB pages (_eager._new_output: first-touch page faults of a fresh 256 MB buffer
    measured ~100 ms with torch's allocator, ~20 ms on huge pages; python -m twopass
    bench --cross-entropy), or the pages of one that died (_alloc's cache: streamed)."""
    if logits.device.type == "cpu":
        return _new_output(logits)
    return torch.empty_like(logits, memory_format=torch.contiguous_format), False


@torch.library.custom_op("twopass::cross_entropy", mutates_args=())
def _ce(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grad = _new_grad(logits)[0] if need_grad else logits.new_empty(0)
    loss, z, lse = _compute(
        logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, grad if need_grad else None
    )
    return loss.contiguous(), z.contiguous(), lse.contiguous(), grad


@_ce.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, need_grad):
    lead, lse_dtype = _out_shapes(logits, reduction)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if need_grad else logits.new_empty(0)
    return (logits.new_empty(lead), logits.new_empty(lead), logits.new_empty(logits.shape[:1], dtype=lse_dtype), grad)


@torch.library.custom_op("twopass::cross_entropy_inplace", mutates_args=("logits",))
def _ce_inplace(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
) -> tuple[Tensor, Tensor, Tensor]:
    loss, z, lse = _compute(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, logits)
    return loss.contiguous(), z.contiguous(), lse.contiguous()


@_ce_inplace.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    lead, lse_dtype = _out_shapes(logits, reduction)
    return logits.new_empty(lead), logits.new_empty(lead), logits.new_empty(logits.shape[:1], dtype=lse_dtype)


@torch.library.custom_op("twopass::cross_entropy_scale_grad_", mutates_args=("grad",))
def _scale_grad_(grad: Tensor, g: Tensor) -> None:
    """grad *= g (0-d: the loss was reduced; (N,): per row, reduction "none")."""
    if grad.device.type == "cuda" and grad.dtype in (torch.float32, torch.float16, torch.bfloat16):
        from ..triton import cross_entropy as k

        k.scale_grad_(grad, g)
    else:
        _scale_grad_torch(grad, g)


def _scale_grad_torch(grad: Tensor, g: Tensor) -> None:
    """_scale_grad_ by torch ops (the CPU, and what Triton does not take)."""
    if g.dim() == 0:
        if grad.device.type != "cpu" or float(g) != 1.0:  # on the CPU reading g is free
            grad.mul_(g.to(grad.dtype))
    else:
        grad.mul_(g.to(grad.dtype)[:, None])


@_scale_grad_.register_fake
def _(grad, g):
    return None


@torch.library.custom_op("twopass::cross_entropy_backward", mutates_args=())
def _ce_backward(grad: Tensor, g: Tensor) -> Tensor:
    """grad * g as a new tensor: the stored gradient stays valid, so the graph can be
    run backward again (retain_graph, gradcheck). inplace_backward=True avoids the copy."""
    return _grad_times(grad, g, grad.device.type == "cuda")


def _grad_times(grad: Tensor, g: Tensor, triton_kernel: bool) -> Tensor:
    # On CUDA one Triton pass (1R + 1W, the result the only (N, C) allocation); elsewhere
    # torch ops in float32 at least.
    if triton_kernel and grad.dtype in (torch.float32, torch.float16, torch.bfloat16):
        from ..triton import cross_entropy as k

        out = torch.empty_like(grad, memory_format=torch.contiguous_format)
        return k.scale_grad_(grad if grad.stride(-1) == 1 else grad.contiguous(), g, out=out)
    wide = torch.promote_types(grad.dtype, torch.float32)
    g = g.to(wide) if g.dim() == 0 else g.to(wide)[:, None]
    return (grad.to(wide) * g).to(grad.dtype)


@_ce_backward.register_fake
def _(grad, g):
    return torch.empty_like(grad)


def _setup(ctx, inputs, output) -> None:
    ctx.set_materialize_grads(False)  # no zero (N, C) gradient for the unused outputs
    ctx.save_for_backward(output[3])


def _backward(ctx, g_loss, g_z, g_lse, g_grad):
    (grad,) = ctx.saved_tensors
    if g_loss is None:  # only the logging outputs were used
        return None, None, None, None, None, None, None, None, None
    if (
        grad.device.type == "cpu"
        and g_loss.dim() == 0
        and not torch.compiler.is_compiling()
        and g_loss.item() == 1.0  # (reading it is free on the CPU)
    ):
        # The usual step: the stored gradient is the answer; no copy. If autograd later
        # accumulates into it in place, its version changes and reusing this graph
        # raises torch's in-place error instead of giving a wrong gradient.
        dx = grad
    else:
        dx = torch.ops.twopass.cross_entropy_backward(grad, g_loss)
    return dx, None, None, None, None, None, None, None, None


_ce.register_autograd(_backward, setup_context=_setup)


class _InPlace(torch.autograd.Function):
    """The in-place variant: the logits become their own gradient, marked dirty."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, eps, zc, cap):
        loss, z, lse = torch.ops.twopass.cross_entropy_inplace(
            logits, target, weight, ignore_index, reduction, eps, zc, cap
        )
        ctx.mark_dirty(logits)
        ctx.mark_non_differentiable(z, lse)
        ctx.set_materialize_grads(False)  # no zero (N, C) gradient for the returned logits
        ctx.save_for_backward(logits)
        return loss, z, lse, logits

    @staticmethod
    def backward(ctx, g_loss, g_z, g_lse, g_logits):
        (grad,) = ctx.saved_tensors
        torch.ops.twopass.cross_entropy_scale_grad_(grad, g_loss)
        return grad, None, None, None, None, None, None, None


class _EagerInPlace(torch.autograd.Function):
    """_InPlace on the eager path (_direct_ok, contiguous logits): the kernel on the
    logits' memory and the backward's scaling without the custom ops, whose dispatch
    (mutated arguments, defaults, redispatch) cost ~100 us a step: the benchmark's
    in-place step (forward + backward, its harness's own Function included) on one row
    of 16 float32 logits, one thread, Zen 4 VM, 150-163 -> 59-62 us. mark_dirty bumps
    the logits' version, as the op's mutation does, so an op that saved them raises
    instead of reading the gradient."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, eps, zc, cap):
        loss, z, lse = _direct(logits, target, weight, ignore_index, reduction, eps, zc, cap, logits)
        ctx.mark_dirty(logits)
        ctx.mark_non_differentiable(z, lse)
        ctx.set_materialize_grads(False)  # no zero (N, C) gradient for the returned logits
        ctx.save_for_backward(logits)
        return loss, z, lse, logits

    @staticmethod
    def backward(ctx, g_loss, g_z, g_lse, g_logits):
        if g_loss is None:  # only the logging outputs were used
            return None, None, None, None, None, None, None, None
        (grad,) = ctx.saved_tensors
        _scale_grad_torch(grad, g_loss)
        return grad, None, None, None, None, None, None, None


_inplace_apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, _EagerInPlace)  # (as function_ce_apply)
