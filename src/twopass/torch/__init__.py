"""PyTorch integration: autograd-aware custom ops over the twopass kernels.

    import twopass.torch as tpt

    y = tpt.softmax(x, dim=-1)
    z = tpt.log_softmax(x, dim=0)
    l = tpt.logsumexp(x, dim=-1, keepdim=False)

CPU tensors run the C++ kernels, CUDA tensors the Triton kernels of `twopass.triton`.
See `twopass.torch._ops` for the softmax family.
"""

from ._ops import log_softmax, logsumexp, softmax

__all__ = ["log_softmax", "logsumexp", "softmax"]
