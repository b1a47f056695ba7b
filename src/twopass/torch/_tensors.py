"""What the torch entries share: which tensors the Triton kernels take, the result
strides the fake implementations promise, reduced shapes."""

from __future__ import annotations

import torch
from torch import Tensor

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_ok(*ts: Tensor) -> bool:
    return all(t.device.type == "cuda" and t.dtype in TRITON_DTYPES for t in ts)


def kernels():
    from .. import triton  # imports triton: only when a CUDA tensor comes

    return triton


def like(ref: Tensor, result: Tensor) -> Tensor:
    """result with the strides of torch.empty_like(ref) (what the fake functions promise)."""
    if result.stride() == ref.stride():  # then ref is dense: empty_like keeps its strides
        return result
    out = torch.empty_like(ref, dtype=result.dtype)
    if out.stride() == result.stride():
        return result
    return out.copy_(result)


def reduced_shape(shape: torch.Size, dim: int, keepdim: bool) -> list[int]:
    s = list(shape)
    if not s:
        return s
    d = dim % len(s)
    if keepdim:
        s[d] = 1
    else:
        del s[d]
    return s


def class_indices(t: Tensor) -> bool:
    """t's dtype holds class indices: an integer type (not float, complex or bool, which
    a cast would silently turn into indices)."""
    dt = t.dtype
    return not (dt.is_floating_point or dt.is_complex or dt is torch.bool)
