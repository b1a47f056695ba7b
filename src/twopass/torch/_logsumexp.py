"""twopass.torch.logsumexp: an autograd-aware custom op over the twopass kernels.

`torch.ops.twopass.logsumexp(x, dim, keepdim)` is a `torch.library.custom_op` with a fake
implementation and a backward custom op (`twopass::logsumexp_backward`,
``grad * exp(x - lse)``). CPU tensors run the C++ kernels (one pass over x; the backward
over the last dim one fused pass too); CUDA float32, float16 and bfloat16 tensors the
Triton kernels; CUDA float64 falls back to torch. Outside tracing and compiling, plain
float32/float64/float16/bfloat16 CPU tensors skip the custom op (`_eager.py`): same kernels, same results,
torch-like per-call cost.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _cuda_eager as _cuda
from . import _eager
from ._cuda_eager import cuda_eager_ok
from ._eager import (
    _is_compiling,
    check_strided,
    eager_lse,
    eager_ok,
    logsumexp_backward,
    logsumexp_forward,
)
from ._tensors import like, reduced_shape, triton_ok

__all__ = ["logsumexp"]


def logsumexp(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` over `dim`, differentiable, in one pass over x.

    Parameters
    ----------
    x : Tensor
        float32, float64, float16 or bfloat16, on the CPU or a CUDA device.
    dim : int, default -1
        The dimension to reduce.
    keepdim : bool, default False
        Keep it with length 1.

    Returns
    -------
    Tensor
        x's shape without `dim`, x's dtype and device; never below the row's maximum.
        NaN in a row gives NaN, +inf gives +inf, only -inf (or an empty row) -inf.

    Raises
    ------
    TypeError
        Another dtype (CPU). IndexError: `dim` out of range.
    """
    if not _is_compiling():
        y = eager_lse(x, dim, keepdim)  # the common small case, in C++ (None: not taken)
        if y is not None:
            return _eager.logsumexp_apply(x, dim, keepdim) if y is False else y
    if eager_ok(x) and type(dim) is int and type(keepdim) is bool and x.dim():
        if x.requires_grad and torch.is_grad_enabled():
            return _eager.logsumexp_apply(x, dim, keepdim)
        return logsumexp_forward(x, dim, keepdim)
    if cuda_eager_ok(x) and type(dim) is int and type(keepdim) is bool and x.dim():
        if x.requires_grad and torch.is_grad_enabled():
            return _cuda.logsumexp_apply(x, dim, keepdim)
        return _cuda.logsumexp_forward(x, dim, keepdim)
    check_strided("logsumexp", x)
    if isinstance(x, Tensor) and not (x.is_floating_point() or x.is_complex()):
        # integers and bool, as torch.logsumexp takes them: in the default float dtype
        return logsumexp(x.to(torch.get_default_dtype()), dim, keepdim)
    return torch.ops.twopass.logsumexp(x, dim, keepdim)


@torch.library.custom_op("twopass::logsumexp", mutates_args=())
def _logsumexp(x: Tensor, dim: int, keepdim: bool) -> Tensor:
    if triton_ok(x):
        return _cuda.logsumexp_forward(x, dim, keepdim)
    if x.device.type == "cpu" and x.dim() and x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return logsumexp_forward(x, dim, keepdim)  # what the eager path runs (_eager.py)
    if x.device.type == "cpu":
        import twopass

        r = twopass.logsumexp(x, axis=dim, keepdims=keepdim)
        r = torch.as_tensor(r)
        return r.contiguous().reshape(reduced_shape(x.shape, dim, keepdim))
    return torch.logsumexp(x, dim, keepdim).contiguous()


@_logsumexp.register_fake
def _(x: Tensor, dim: int, keepdim: bool) -> Tensor:
    return x.new_empty(reduced_shape(x.shape, dim, keepdim))


@torch.library.custom_op("twopass::logsumexp_backward", mutates_args=())
def _logsumexp_backward(grad: Tensor, x: Tensor, lse: Tensor, dim: int, keepdim: bool) -> Tensor:
    """grad * exp(x - lse), in float32 arithmetic for float16/bfloat16."""
    if triton_ok(grad, x, lse) and grad.dtype == x.dtype == lse.dtype:
        return _cuda.logsumexp_backward(grad, x, lse, dim, keepdim)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and grad.device.type == "cpu":
        return like(x, logsumexp_backward(grad, x, lse, dim, keepdim))
    if x.dim() > 0 and not keepdim:
        grad, lse = grad.unsqueeze(dim), lse.unsqueeze(dim)
    wide = torch.promote_types(x.dtype, torch.float32)
    dx = grad.to(wide) * torch.exp(x.to(wide) - lse.to(wide))
    return like(x, dx.to(x.dtype))


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
