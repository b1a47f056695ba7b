"""JAX integration: softmax, log_softmax, logsumexp and cross_entropy inside `jax.jit`.

    import twopass.jax as tpj

    y = tpj.softmax(x, axis=-1)                  # was: jax.nn.softmax(x, axis=-1)
    z = tpj.log_softmax(x, axis=0)
    l = tpj.logsumexp(x, axis=-1, keepdims=True)  # was: jax.nn.logsumexp(...)
    loss = tpj.cross_entropy(logits, target, label_smoothing=0.1)

Each call is an XLA FFI custom call on the CPU (`jax.ffi.ffi_call`), whose handler runs
the same C++ kernels as `twopass.softmax` (no second copy of them): usable under
`jax.jit`, differentiable (`jax.custom_vjp`; the backward of a last axis runs twopass's
fused backward kernels) and batched by `jax.vmap` over any axis. float32, bfloat16,
float16 and, with `jax_enable_x64`, float64; integers are computed in JAX's default
float. Special values are those of `jax.nn` (the table in docs/design.md).

The handlers include jaxlib's FFI headers, so they are compiled on first use (a few
seconds, with the system's C++ compiler) and cached per user; see `_build`. CPU only:
arrays on another device raise where XLA lowers the call. Threads, the ISA and the
algorithm are fixed when a function is traced (`threads=None`: TWOPASS_NUM_THREADS,
else the CPUs this process may use).
"""

from __future__ import annotations

from typing import Any

from . import _ops

__all__ = ["cross_entropy", "log_softmax", "logsumexp", "softmax"]


def softmax(x: Any, axis: Any = -1, *, algorithm: str = "auto", threads: int | None = None) -> Any:
    """``jax.nn.softmax(x, axis)``: exp(x) / sum(exp(x)) along `axis`.

    axis: an int, a tuple of ints (one logical row) or None (every axis); default -1, as
    jax.nn. `algorithm` and `threads` as in `twopass.softmax` (fixed at trace time).
    No `where=`. Returns an array of x's shape and dtype.
    """
    return _ops.softmax_family(x, axis, False, algorithm, threads)


def log_softmax(x: Any, axis: Any = -1, *, algorithm: str = "auto", threads: int | None = None) -> Any:
    """``jax.nn.log_softmax(x, axis)``: x - logsumexp(x) along `axis` (see `softmax`)."""
    return _ops.softmax_family(x, axis, True, algorithm, threads)


def logsumexp(a: Any, axis: Any = None, keepdims: bool = False, *, threads: int | None = None) -> Any:
    """``jax.nn.logsumexp(a, axis, keepdims=keepdims)``: log(sum(exp(a))) along `axis`.

    axis: an int, a tuple of ints or None (every axis, jax.nn's default). One pass over
    the data (the two-pass algorithm's first). No `b=`, `return_sign=` or `where=`.
    An empty axis gives -inf. Returns an array of a's dtype.
    """
    return _ops.logsumexp(a, axis, keepdims, threads)


def cross_entropy(
    logits: Any,
    target: Any,
    weight: Any = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    threads: int | None = None,
) -> Any:
    """Cross-entropy of logits against class indices, as `twopass.cross_entropy`
    (torch's definition plus z-loss and soft-capping: docs/cross_entropy.md).

    logits: (C,), (N, C) or (N, C, d1, ..., dK), the class axis being 1 (0 for (C,));
    target: integers of shape (), (N,) or (N, d1, ..., dK), in [0, C) or `ignore_index`;
    weight: optional (C,) class weights. The gradient with respect to the logits is the
    kernel's, computed with the loss in the same pass over the logits; there is no
    gradient for `weight` (zero). A target outside [0, C) that is not `ignore_index`
    raises an error when the computation runs (XLA's runtime error). Returns the loss
    in the logits' dtype: 0-d, or the target's shape for reduction="none".
    """
    return _ops.cross_entropy(
        logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, threads
    )
