"""The eager CUDA path of twopass.torch: the Triton launchers called straight, without the
custom op's dispatch.

A `torch.library` custom op costs tens of microseconds of host time per call in eager mode
(on the H200 machine of 2026-12-04, `tools/gpu_overhead.py`: twopass.torch.softmax 80-150 us
a call against 50-90 us for the launcher it wraps), which is longer than the kernels of
most shapes. Plain CUDA float32/float16/bfloat16 tensors outside anything that traces or
transforms (`cuda_eager_ok`, the CUDA twin of `_eager.eager_ok`) take this path: the
launcher, and a thin `torch.autograd.Function` only when x needs a gradient. Everything
else (torch.compile, fake tensors, functorch transforms, modes, subclasses) takes the
custom ops, which run the same launchers, so both give identical results.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._eager import (
    _c_apply,
    _dispatch_modes,
    _function_modes,
    _functorch_active,
    _is_compiling,
    _softmax_grad_ops,
    logsumexp_grad_ops,
)
from ._tensors import TRITON_DTYPES, kernels, like

_PLAIN = (Tensor, torch.nn.Parameter)
_STRIDED = torch.strided


def cuda_eager_ok(x: object) -> bool:
    """x is a plain float32/float16/bfloat16 CUDA tensor, not a negative view, and nothing
    traces or intercepts the call."""
    return (
        type(x) in _PLAIN
        and x.is_cuda  # type: ignore[attr-defined]
        and x.dtype in TRITON_DTYPES  # type: ignore[attr-defined]
        and x.layout is _STRIDED  # type: ignore[attr-defined]
        and not x.is_nested  # type: ignore[attr-defined]
        and not _is_compiling()
        and not _functorch_active()
        and not _dispatch_modes()
        and not _function_modes()
        and not x.is_neg()  # type: ignore[attr-defined]
    )


def softmax_forward(x: Tensor, dim: int, log: bool) -> Tensor:
    return like(x, kernels()._softmax_forward(x, dim, log))


def softmax_backward(g: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    if g.is_cuda and g.dtype == y.dtype:
        return like(y, kernels()._softmax_backward(g, y, dim, log))
    fn = torch._log_softmax_backward_data if log else torch._softmax_backward_data
    return like(y, fn(g.to(y.dtype), y, dim, y.dtype))


def logsumexp_forward(x: Tensor, dim: int, keepdim: bool) -> Tensor:
    return kernels()._logsumexp_forward(x, dim, keepdim)


def logsumexp_backward(g: Tensor, x: Tensor, lse: Tensor, dim: int, keepdim: bool) -> Tensor:
    if g.is_cuda and g.dtype == x.dtype == lse.dtype:
        return like(x, kernels()._logsumexp_backward(g, x, lse, dim, keepdim))
    if not keepdim:
        g, lse = g.unsqueeze(dim), lse.unsqueeze(dim)
    return like(x, (g.float() * torch.exp(x.float() - lse.float())).to(x.dtype))


class CudaSoftmaxFunction(torch.autograd.Function):
    """softmax / log_softmax on a CUDA tensor that needs a gradient (eager)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, log: bool) -> Tensor:
        y = softmax_forward(x, dim, log)
        ctx.dim, ctx.log = dim, log
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        (y,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable torch operations
            return _softmax_grad_ops(g, y, ctx.dim, ctx.log), None, None
        return softmax_backward(g, y, ctx.dim, ctx.log), None, None


class CudaLogSumExpFunction(torch.autograd.Function):
    """logsumexp on a CUDA tensor that needs a gradient (eager)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, keepdim: bool) -> Tensor:
        r = logsumexp_forward(x, dim, keepdim)
        ctx.dim, ctx.keepdim = dim, keepdim
        ctx.save_for_backward(x, r)
        return r

    @staticmethod
    def backward(ctx, g: Tensor):
        x, r = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable torch operations
            return logsumexp_grad_ops(g, x, r, ctx.dim, ctx.keepdim), None, None
        return logsumexp_backward(g, x, r, ctx.dim, ctx.keepdim), None, None


# As in _eager.py: the C half of Function.apply (cuda_eager_ok has ruled functorch out).
softmax_apply = _c_apply.__get__(None, CudaSoftmaxFunction)
logsumexp_apply = _c_apply.__get__(None, CudaLogSumExpFunction)
