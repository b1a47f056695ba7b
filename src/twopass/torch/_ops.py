"""PyTorch integration: softmax, log_softmax and logsumexp as autograd-aware custom ops.

    import twopass.torch as tpt

    y = tpt.softmax(x, dim=-1)
    z = tpt.log_softmax(x, dim=0)
    l = tpt.logsumexp(x, dim=-1, keepdim=False)

Each is a `torch.library.custom_op` in the `twopass` namespace (`torch.ops.twopass.softmax`,
...), with a fake implementation (so `torch.compile` traces through it without running it)
and a backward that is itself a custom op:

- CPU tensors run the C++ kernels (`twopass.softmax` etc. on the tensor's memory, written
  straight into the result tensor); the backward uses torch's own CPU kernels
  (`torch._softmax_backward_data`, ...), whose traffic is already minimal.
- CUDA tensors of float32, float16 or bfloat16 run the Triton kernels of `twopass.triton`
  (imported on first use), forward and backward. CUDA float64 falls back to torch.
- Results have the strides `torch.empty_like(x)` gives (x's own when x is dense).

The semantics are torch's: NaN rows, +inf and all -inf rows, empty axes, as in the module
docs of `twopass` and `twopass.triton`. Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["log_softmax", "logsumexp", "softmax"]


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) over `dim` (differentiable)."""
    return torch.ops.twopass.softmax(x, dim, False)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """x - logsumexp(x) over `dim` (differentiable)."""
    return torch.ops.twopass.softmax(x, dim, True)


def logsumexp(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """log(sum(exp(x))) over `dim` (differentiable), one pass over x."""
    return torch.ops.twopass.logsumexp(x, dim, keepdim)


# ----------------------------------------------------------------------------------
# Dispatch.
# ----------------------------------------------------------------------------------
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_ok(*ts: Tensor) -> bool:
    return all(t.device.type == "cuda" and t.dtype in _TRITON_DTYPES for t in ts)


def _kernels():
    from ..triton import softmax as kernels  # imports triton: only when a CUDA tensor comes

    return kernels


def _like(ref: Tensor, result: Tensor) -> Tensor:
    """result with the strides of torch.empty_like(ref) (what the fake functions promise)."""
    out = torch.empty_like(ref, dtype=result.dtype)
    if out.stride() == result.stride():
        return result
    return out.copy_(result)


def _reduced_shape(shape: torch.Size, dim: int, keepdim: bool) -> list[int]:
    s = list(shape)
    if not s:
        return s
    d = dim % len(s)
    if keepdim:
        s[d] = 1
    else:
        del s[d]
    return s


# ----------------------------------------------------------------------------------
# softmax / log_softmax.
# ----------------------------------------------------------------------------------
@torch.library.custom_op("twopass::softmax", mutates_args=())
def _softmax(x: Tensor, dim: int, log: bool) -> Tensor:
    if _triton_ok(x):
        return _kernels()._softmax_forward(x, dim, log)
    if x.device.type == "cpu":
        import twopass

        out = torch.empty_like(x)
        # (a 0-d x as shape (1,): twopass's CPU API checks a 0-d `out` against shape (1,))
        xv, ov = (x.reshape(1), out.view(1)) if x.dim() == 0 else (x, out)
        (twopass.log_softmax if log else twopass.softmax)(xv, axis=dim, out=ov)
        return out
    return _like(x, (torch.log_softmax if log else torch.softmax)(x, dim))


@_softmax.register_fake
def _(x: Tensor, dim: int, log: bool) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("twopass::softmax_backward", mutates_args=())
def _softmax_backward(grad: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    """softmax: y * (g - sum(g * y)); log_softmax: g - exp(y) * sum(g)."""
    if _triton_ok(grad, y) and grad.dtype == y.dtype:
        return _kernels()._softmax_backward(grad, y, dim, log)
    fn = torch._log_softmax_backward_data if log else torch._softmax_backward_data
    return _like(y, fn(grad.to(y.dtype), y, dim, y.dtype))


@_softmax_backward.register_fake
def _(grad: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    return torch.empty_like(y)


def _softmax_setup(ctx, inputs, output) -> None:
    _, dim, log = inputs
    ctx.dim, ctx.log = dim, log
    ctx.save_for_backward(output)


def _softmax_grad(ctx, grad: Tensor):
    (y,) = ctx.saved_tensors
    return torch.ops.twopass.softmax_backward(grad, y, ctx.dim, ctx.log), None, None


_softmax.register_autograd(_softmax_grad, setup_context=_softmax_setup)


# ----------------------------------------------------------------------------------
# logsumexp.
# ----------------------------------------------------------------------------------
@torch.library.custom_op("twopass::logsumexp", mutates_args=())
def _logsumexp(x: Tensor, dim: int, keepdim: bool) -> Tensor:
    if _triton_ok(x):
        return _kernels()._logsumexp_forward(x, dim, keepdim)
    if x.device.type == "cpu":
        import twopass

        r = twopass.logsumexp(x, axis=dim, keepdims=keepdim)
        r = torch.as_tensor(r)
        return r.contiguous().reshape(_reduced_shape(x.shape, dim, keepdim))
    return torch.logsumexp(x, dim, keepdim).contiguous()


@_logsumexp.register_fake
def _(x: Tensor, dim: int, keepdim: bool) -> Tensor:
    return x.new_empty(_reduced_shape(x.shape, dim, keepdim))


@torch.library.custom_op("twopass::logsumexp_backward", mutates_args=())
def _logsumexp_backward(grad: Tensor, x: Tensor, lse: Tensor, dim: int, keepdim: bool) -> Tensor:
    """grad * exp(x - lse), in float32 arithmetic for float16/bfloat16."""
    if _triton_ok(grad, x, lse) and grad.dtype == x.dtype == lse.dtype:
        return _kernels()._logsumexp_backward(grad, x, lse, dim, keepdim)
    if x.dim() > 0 and not keepdim:
        grad, lse = grad.unsqueeze(dim), lse.unsqueeze(dim)
    wide = torch.promote_types(x.dtype, torch.float32)
    dx = grad.to(wide) * torch.exp(x.to(wide) - lse.to(wide))
    return _like(x, dx.to(x.dtype))


@_logsumexp_backward.register_fake
def _(grad: Tensor, x: Tensor, lse: Tensor, dim: int, keepdim: bool) -> Tensor:
    return torch.empty_like(x)


def _logsumexp_setup(ctx, inputs, output) -> None:
    x, dim, keepdim = inputs
    ctx.dim, ctx.keepdim = dim, keepdim
    ctx.save_for_backward(x, output)


def _logsumexp_grad(ctx, grad: Tensor):
    x, lse = ctx.saved_tensors
    return torch.ops.twopass.logsumexp_backward(grad, x, lse, ctx.dim, ctx.keepdim), None, None


_logsumexp.register_autograd(_logsumexp_grad, setup_context=_logsumexp_setup)
