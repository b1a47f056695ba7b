"""JAX integration: softmax, log_softmax, logsumexp and cross_entropy inside `jax.jit`.

    import twopass.jax as tpj

    y = tpj.softmax(x, axis=-1)                  # was: jax.nn.softmax(x, axis=-1)
    z = tpj.log_softmax(x, axis=0)
    l = tpj.logsumexp(x, axis=-1, keepdims=True)  # was: jax.nn.logsumexp(...)
    loss = tpj.cross_entropy(logits, target, label_smoothing=0.1)

Each call is an XLA FFI custom call on the CPU (`jax.ffi.ffi_call`), whose handler runs
the same C++ kernels as `twopass.softmax` (no second copy of them): usable under
`jax.jit`, differentiable (`jax.custom_vjp`; the backward of softmax and log_softmax over
any axis, and of logsumexp over the last, runs twopass's fused backward kernels) and
batched by `jax.vmap` over any axis. float32, bfloat16, float16 and, with
`jax_enable_x64`, float64; integers are computed in JAX's default float. Special values
are those of `jax.nn` (the table in docs/design.md).

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
    """Softmax along `axis`, as ``jax.nn.softmax(x, axis)``, as an XLA FFI call.

    Parameters
    ----------
    x : array_like
        float32, float64 (with x64), float16 or bfloat16; integers become JAX's default
        float. A JAX array or tracer (inside jit, grad, vmap) or anything jnp.asarray takes.
    axis : int, tuple of ints or None, default -1
        The axis (negative counts from the end), several axes as one logical row, or None
        for every axis (as jax.nn).
    algorithm : str, keyword-only
        "auto" or a name from `twopass.ALGORITHMS`, fixed when traced.
    threads : int, optional, keyword-only
        Kernel threads, fixed when traced (default: TWOPASS_NUM_THREADS, else the CPUs
        this process may use).

    Returns
    -------
    jax.Array
        exp(x) / sum(exp(x)), x's shape and dtype. Special values as jax.nn.

    Raises
    ------
    TypeError
        A complex or other unsupported dtype.
    ValueError
        An axis out of range or repeated; an unknown algorithm; threads < 1.
    RuntimeError
        On first use, when the FFI handlers cannot be built (no C++ compiler).
    """
    return _ops.softmax_family(x, axis, False, algorithm, threads)


def log_softmax(x: Any, axis: Any = -1, *, algorithm: str = "auto", threads: int | None = None) -> Any:
    """log_softmax along `axis`, as ``jax.nn.log_softmax(x, axis)``, as an XLA FFI call.

    Parameters
    ----------
    x : array_like
        As for `softmax`.
    axis : int, tuple of ints or None, default -1
        As for `softmax`.
    algorithm : str, keyword-only
        "auto" or a name from `twopass.ALGORITHMS`, fixed when traced.
    threads : int, optional, keyword-only
        As for `softmax`.

    Returns
    -------
    jax.Array
        x - logsumexp(x), x's shape and dtype (never positive).

    Raises
    ------
    TypeError, ValueError, RuntimeError
        As `softmax`.
    """
    return _ops.softmax_family(x, axis, True, algorithm, threads)


def logsumexp(a: Any, axis: Any = None, keepdims: bool = False, *, threads: int | None = None) -> Any:
    """log(sum(exp(a))) along `axis`, as ``jax.nn.logsumexp(a, axis, keepdims=keepdims)``.

    One pass over the data (the two-pass algorithm's first), as an XLA FFI call.

    Parameters
    ----------
    a : array_like
        As `x` of `softmax`.
    axis : int, tuple of ints or None, default None
        The reduced axes; None: every axis (jax.nn's default).
    keepdims : bool, default False
        Keep the reduced axes with length 1.
    threads : int, optional, keyword-only
        As for `softmax`.

    Returns
    -------
    jax.Array
        a's dtype; -inf for an empty axis. No `b=`, `return_sign=` or `where=`.

    Raises
    ------
    TypeError, ValueError, RuntimeError
        As `softmax`.
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
    """Cross-entropy of logits against class indices, as `twopass.cross_entropy`.

    torch's definition plus z-loss and soft-capping (docs/cross_entropy.md), as an XLA FFI
    call; differentiable with respect to the logits, the gradient computed by the kernel
    in the same pass as the loss.

    Parameters
    ----------
    logits : array_like
        float32, float64 (with x64), float16 or bfloat16: shape (C,), (N, C) or
        (N, C, d1, ..., dK), the class axis being 1 (0 for (C,)).
    target : array_like of int
        Class indices in [0, C) or `ignore_index`: shape (), (N,) or (N, d1, ..., dK).
    weight : array_like, optional
        (C,) class weights (no gradient flows to them).
    ignore_index : int, default -100, keyword-only
        Targets with this value count for nothing.
    reduction : {"mean", "sum", "none"}, default "mean", keyword-only
        As torch.
    label_smoothing : float in [0, 1], default 0.0, keyword-only
    z_loss : float >= 0, default 0.0, keyword-only
        Coefficient of lse**2 added per row.
    softcap : float > 0, optional, keyword-only
        Replaces the logits by softcap * tanh(logits / softcap) first.
    threads : int, optional, keyword-only
        As for `softmax`.

    Returns
    -------
    jax.Array
        The loss in the logits' dtype: 0-d, or the target's shape for "none".

    Raises
    ------
    TypeError
        Unsupported logits dtype; targets that are not integers.
    ValueError
        Shapes that do not match; an unknown reduction; options out of range.
    RuntimeError
        On first use, when the FFI handlers cannot be built. A target outside [0, C) that
        is not `ignore_index` is found when the computation runs: XLA raises its runtime
        error then.
    """
    return _ops.cross_entropy(
        logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, threads
    )
