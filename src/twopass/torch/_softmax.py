"""twopass.torch.softmax and log_softmax: autograd-aware custom ops over the twopass kernels.

`torch.ops.twopass.softmax(x, dim, log)` is a `torch.library.custom_op` with a fake
implementation (so `torch.compile` traces through it without running it) and a backward
that is itself a custom op (`twopass::softmax_backward`):

- CPU tensors run the C++ kernels on the tensor's memory, written straight into the
  result (`_eager.py`); the backward runs twopass's fused row kernels over the last dim
  and its panel kernels over another (one read of g and y from memory, one write) for
  contiguous g and y, torch's (`torch._softmax_backward_data`) for other layouts.
- Outside tracing and compiling, plain float32/float64/float16/bfloat16 CPU tensors skip the custom op:
  the same kernels through `_eager.py` and, only when x needs a gradient, an autograd node
  in C++ (`_node.py`; a thin `torch.autograd.Function` until it is built), for a per-call
  cost close to torch's own (`_eager.eager_ok` says when); the common small case (last
  dim, contiguous, at most 64 KiB) is one C++ call (`_eager.eager_rows`). Results are
  identical either way.
- CUDA float32, float16 and bfloat16 tensors run the Triton kernels of
  `twopass.triton.softmax` (imported on first use), forward and backward; outside tracing
  and compiling, without the custom op (`_cuda_eager.py`). CUDA float64 falls back to torch.
- Results have the strides `torch.empty_like(x)` gives (x's own when x is dense).

Special values are torch's (docs/design.md). Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _cuda_eager as _cuda
from . import _eager
from ._cuda_eager import cuda_eager_ok
from ._eager import _is_compiling, check_strided, eager_ok, eager_rows, softmax_backward, softmax_forward
from ._tensors import like, triton_ok

__all__ = ["log_softmax", "softmax"]


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax over `dim`: ``exp(x) / sum(exp(x))``, differentiable (``torch.softmax``'s
    results and special values).

    Parameters
    ----------
    x : Tensor
        float32, float64, float16 or bfloat16, on the CPU or a CUDA device.
    dim : int, default -1
        The dimension to normalise; negative counts from the end.

    Returns
    -------
    Tensor
        Of x's shape, dtype and device. Rows with NaN or +inf, or of only -inf, are NaN.

    Raises
    ------
    TypeError
        Another dtype (CPU). IndexError: `dim` out of range.
    """
    if not _is_compiling():
        y = eager_rows(x, dim, False)  # the common small case, in C++ (None: not taken)
        if y is not None:
            return _eager.softmax_apply(x, dim, False) if y is False else y
        if eager_ok(x) and type(dim) is int and x.dim():
            if x.requires_grad and torch.is_grad_enabled():
                return _eager.softmax_apply(x, dim, False)
            return softmax_forward(x, dim, False)
        if cuda_eager_ok(x) and type(dim) is int and x.dim():
            if x.requires_grad and torch.is_grad_enabled():
                return _cuda.softmax_apply(x, dim, False)
            return _cuda.softmax_forward(x, dim, False)
    check_strided("softmax", x)
    return torch.ops.twopass.softmax(x, dim, False)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Log-softmax over `dim`: ``x - logsumexp(x)``, differentiable; never positive.

    Parameters
    ----------
    x : Tensor
        float32, float64, float16 or bfloat16, on the CPU or a CUDA device.
    dim : int, default -1
        The dimension to normalise; negative counts from the end.

    Returns
    -------
    Tensor
        Of x's shape, dtype and device. Rows with NaN or +inf, or of only -inf, are NaN;
        -inf entries of other rows give -inf.

    Raises
    ------
    TypeError
        Another dtype (CPU). IndexError: `dim` out of range.
    """
    if not _is_compiling():
        y = eager_rows(x, dim, True)  # the common small case, in C++ (None: not taken)
        if y is not None:
            return _eager.softmax_apply(x, dim, True) if y is False else y
        if eager_ok(x) and type(dim) is int and x.dim():
            if x.requires_grad and torch.is_grad_enabled():
                return _eager.softmax_apply(x, dim, True)
            return softmax_forward(x, dim, True)
        if cuda_eager_ok(x) and type(dim) is int and x.dim():
            if x.requires_grad and torch.is_grad_enabled():
                return _cuda.softmax_apply(x, dim, True)
            return _cuda.softmax_forward(x, dim, True)
    check_strided("log_softmax", x)
    return torch.ops.twopass.softmax(x, dim, True)


@torch.library.custom_op("twopass::softmax", mutates_args=())
def _softmax(x: Tensor, dim: int, log: bool) -> Tensor:
    if triton_ok(x):  # (like(): the strides the fake promises, also for a non-dense x)
        return _cuda.softmax_forward(x, dim, log)
    if x.device.type == "cpu" and x.dim() and x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return softmax_forward(x, dim, log)  # what the eager path runs (_eager.py)
    if x.device.type == "cpu":
        if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise TypeError(
                f"twopass.torch.{'log_softmax' if log else 'softmax'}: unsupported dtype {x.dtype}; "
                "expected float32, float64, float16 or bfloat16"
            )
        import twopass

        out = torch.empty_like(x)
        # (a 0-d x as shape (1,): twopass's CPU API checks a 0-d `out` against shape (1,))
        xv, ov = (x.reshape(1), out.view(1)) if x.dim() == 0 else (x, out)
        (twopass.log_softmax if log else twopass.softmax)(xv, axis=dim, out=ov)
        return out
    return like(x, (torch.log_softmax if log else torch.softmax)(x, dim))


@_softmax.register_fake
def _(x: Tensor, dim: int, log: bool) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("twopass::softmax_backward", mutates_args=())
def _softmax_backward(grad: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    """softmax: y * (g - sum(g * y)); log_softmax: g - exp(y) * sum(g)."""
    if triton_ok(grad, y) and grad.dtype == y.dtype:
        return _cuda.softmax_backward(grad, y, dim, log)
    if y.device.type == "cpu" and grad.device.type == "cpu":
        return like(y, softmax_backward(grad, y, dim, log))  # twopass's row kernels where they apply
    fn = torch._log_softmax_backward_data if log else torch._softmax_backward_data
    return like(y, fn(grad.to(y.dtype), y, dim, y.dtype))


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
