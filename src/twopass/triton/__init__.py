"""GPU kernels of twopass, in Triton (imported lazily: `import twopass` never imports triton).

The launchers take and return torch tensors on a CUDA device (or on the CPU under
`TRITON_INTERPRET=1`, which is how CI runs them):

    _softmax_forward(x, dim=-1, log=False)          softmax / log_softmax
    _softmax_backward(grad, y, dim=-1, log=False)   their input gradients, from the output y
    _logsumexp_forward(x, dim=-1, keepdim=False)
    _logsumexp_backward(grad, x, lse, dim=-1, keepdim=False)

    cross_entropy_forward(logits, target, weight, scale, *, ignore_index=-100,
                          label_smoothing=0.0, z_loss=0.0, softcap=None, grad=None)
                                                    fused cross-entropy: per-row loss, z-loss
                                                    and lse in one read of the logits; with
                                                    grad=, also the gradient (may overwrite
                                                    the logits)
    scale_grad_(grad, g)                            that gradient times the upstream gradient
                                                    (a no-op read on the device when g == 1)

One module per operation, each with its kernels, their traffic and the special values:
`softmax.py` (softmax and log_softmax, and the softmax-family kernels that logsumexp's
forward also runs), `logsumexp.py`, `cross_entropy.py` (docs/cross_entropy.md defines the
cross-entropy). Shared by all: `_launch.py` (launch, launch hook and trace, `cfg=` merging,
device caps, checks, tensor layout) and `_common.py` (the kernels' shared @triton.jit helpers).
"""

from .cross_entropy import cross_entropy_forward, scale_grad_
from .logsumexp import _logsumexp_backward, _logsumexp_forward
from .softmax import _softmax_backward, _softmax_forward

__all__ = [
    "_logsumexp_backward",
    "_logsumexp_forward",
    "_softmax_backward",
    "_softmax_forward",
    "cross_entropy_forward",
    "scale_grad_",
]
