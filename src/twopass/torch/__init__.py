"""PyTorch integration: autograd-aware custom ops over the twopass kernels.

    import twopass.torch as tpt

    y = tpt.softmax(x, dim=-1)
    z = tpt.log_softmax(x, dim=0)
    l = tpt.logsumexp(x, dim=-1, keepdim=False)
    loss = tpt.cross_entropy(logits, target, label_smoothing=0.1, z_loss=1e-4)
    loss = tpt.linear_cross_entropy(hidden, head.weight, target)  # no (N, V) logits

CPU tensors run the C++ kernels, CUDA tensors the Triton kernels of `twopass.triton`.
One module per operation: `_softmax` (softmax, log_softmax), `_logsumexp`,
`_cross_entropy` (the fused loss, docs/cross_entropy.md), `_linear_cross_entropy` (the
vocabulary head fused with it, chunked over tokens); `_tensors` holds what they
share; `twopass.torch.distributed` runs the same ops over an axis sharded across ranks
(imported on first use).
"""

from ._cross_entropy import cross_entropy
from ._linear_cross_entropy import LinearCrossEntropy, linear_cross_entropy
from ._logsumexp import logsumexp
from ._softmax import log_softmax, softmax

__all__ = [
    "LinearCrossEntropy",
    "cross_entropy",
    "distributed",
    "linear_cross_entropy",
    "log_softmax",
    "logsumexp",
    "softmax",
]


def __getattr__(name: str):
    # twopass.torch.distributed loads torch.distributed: only when asked for.
    if name == "distributed":
        import importlib

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
