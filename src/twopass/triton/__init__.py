"""GPU kernels of twopass, in Triton (imported lazily: `import twopass` never imports triton).

The launchers take and return torch tensors on a CUDA device (or on the CPU under
`TRITON_INTERPRET=1`, which is how CI runs them):

    _softmax_forward(x, dim=-1, log=False)          softmax / log_softmax
    _softmax_backward(grad, y, dim=-1, log=False)   their input gradients, from the output y
    _logsumexp_forward(x, dim=-1, keepdim=False)
    _logsumexp_backward(grad, x, lse, dim=-1, keepdim=False)

See `softmax.py` for the kernels, their traffic and the special values.
"""

from .softmax import _logsumexp_backward, _logsumexp_forward, _softmax_backward, _softmax_forward

__all__ = ["_logsumexp_backward", "_logsumexp_forward", "_softmax_backward", "_softmax_forward"]
