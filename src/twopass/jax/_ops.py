"""softmax, log_softmax, logsumexp and cross_entropy as XLA FFI calls (CPU), with
custom VJPs. Everything decided from shapes (algorithm, threads, ISA) is decided at
trace time and passed to the handlers as attributes; vmap prepends batch dimensions
(`vmap_method="broadcast_all"`), which the handlers treat as more rows, the softmax
axis being passed counted from the end."""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _alloc, _dispatch
from .._arrays import check_algorithm, check_threads
from .._cross_entropy import check_options
from .._dispatch import ALGO_CODES, OP_CODES
from .._softmax import auto_algorithm
from ._build import load

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(jnp.float16), np.dtype(jnp.bfloat16))
_REDUCTION = {"mean": 0, "sum": 1, "none": 2}
_i = np.int64  # FFI attributes: int64 and float64, as the handlers declare them


def _ffi(target: str, out: Any) -> Any:
    load()  # build (first use), load and register the handlers
    return jax.ffi.ffi_call(target, out, vmap_method="broadcast_all")


def _common() -> dict[str, Any]:
    # huge: outputs from this many bytes get 2 MiB pages (csrc/jax_ffi.cpp, huge_pages).
    # XLA's outputs are fresh memory: normal stores, never streaming ones (_arrays.streaming_stores).
    huge = _alloc.HUGE_THRESHOLD if _alloc.ENABLED else 0
    return {"isa": _i(_dispatch.ISA_CODES[_dispatch.ISA]), "huge": _i(huge)}


def as_float(x: Any, name: str) -> jax.Array:
    """x as a JAX array of a float dtype the kernels take (integers and bools: JAX's
    default float, as jnp.exp would give)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise TypeError(f"{name}: complex input is not supported (dtype {x.dtype})")
        x = x.astype(jnp.result_type(float))
    if np.dtype(x.dtype) not in _FLOATS:
        raise TypeError(f"{name}: dtype {x.dtype} is not supported (float32, float64, float16, bfloat16)")
    return x


def axes_of(axis: Any, ndim: int, name: str) -> tuple[int, ...]:
    """axis (int, tuple of ints or None) as sorted non-negative axes; jax.nn's errors."""
    if axis is None:
        return tuple(range(ndim))
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        a = operator.index(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}: axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: repeated axis in {axis}")
    return tuple(sorted(out))


def one_axis(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, int, Any]:
    """(x seen with the reduced axes as one, that axis counted from the end, a function
    taking a result of that shape back to x's). One axis is used in place; several are
    moved last and merged (a transpose); a 0-d x is a row of one."""
    if x.ndim == 0:
        return x.reshape(1), -1, lambda y: y.reshape(())
    if len(axes) == 1:
        return x, axes[0] - x.ndim, lambda y: y
    rest = [a for a in range(x.ndim) if a not in axes]
    perm = rest + list(axes)
    moved_shape = tuple(x.shape[a] for a in perm)
    merged = jnp.transpose(x, perm).reshape(*moved_shape[: len(rest)], -1)
    inverse = np.argsort(perm).tolist()
    return merged, -1, lambda y: jnp.transpose(y.reshape(moved_shape), inverse)


# ----------------------------------------------------------------------------------
# softmax, log_softmax
# ----------------------------------------------------------------------------------
def softmax_family(x: Any, axis: Any, log: bool, algorithm: str, threads: int | None) -> jax.Array:
    name = f"twopass.jax.{'log_softmax' if log else 'softmax'}"
    x = as_float(x, name)
    axes = axes_of(axis, x.ndim, name)
    algo = check_algorithm(algorithm, name)
    nthreads = check_threads(threads, name)
    if not axes and x.ndim:  # axis=(): every element its own row
        return jnp.where(jnp.isnan(x) | jnp.isinf(x), jnp.nan, 0.0 if log else 1.0).astype(x.dtype)
    if x.size == 0:
        return jnp.zeros(x.shape, x.dtype)
    xr, ax, back = one_axis(x, axes)
    if algo == "auto":
        n = xr.shape[ax]
        inner = math.prod(xr.shape[xr.ndim + ax + 1 :])  # > 1: panels of a non-last axis
        op = "log_softmax" if log else "softmax"
        algo = auto_algorithm(op, np.dtype(xr.dtype), n, xr.size, nthreads, inner=inner)
    return back(_softmax(xr, ax, log, ALGO_CODES[algo], nthreads))


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _softmax(x: jax.Array, ax: int, log: bool, algo: int, threads: int) -> jax.Array:
    op = OP_CODES["log_softmax" if log else "softmax"]
    return _ffi("twopass_softmax", jax.ShapeDtypeStruct(x.shape, x.dtype))(
        x, op=_i(op), lse_op=_i(OP_CODES["logsumexp"]), algo=_i(algo), axis=_i(ax), threads=_i(threads), **_common()
    )


def _softmax_fwd(x, ax, log, algo, threads):
    y = _softmax(x, ax, log, algo, threads)
    return y, y


def _softmax_bwd(ax, log, algo, threads, y, g):
    # twopass's fused backward: rows of a last axis, panels of another (one read of g and y)
    op = OP_CODES["log_softmax" if log else "softmax"]
    gx = _ffi("twopass_softmax_backward", jax.ShapeDtypeStruct(y.shape, y.dtype))(
        g.astype(y.dtype), y, op=_i(op), axis=_i(ax), threads=_i(threads), **_common()
    )
    return (gx,)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


# ----------------------------------------------------------------------------------
# logsumexp
# ----------------------------------------------------------------------------------
def logsumexp(a: Any, axis: Any, keepdims: bool, threads: int | None) -> jax.Array:
    name = "twopass.jax.logsumexp"
    x = as_float(a, name)
    axes = axes_of(axis, x.ndim, name)
    nthreads = check_threads(threads, name)
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    shape = kept if keepdims else tuple(d for i, d in enumerate(x.shape) if i not in axes)
    if not axes and x.ndim:  # nothing reduced: log(exp(x)) = x
        return x
    if x.size == 0:  # the empty sum's log; rows of nothing to reduce are empty
        return jnp.full(shape, -jnp.inf, x.dtype)
    if x.ndim == 0:
        return _logsumexp(x.reshape(1), -1, nthreads).reshape(shape)
    rest = [i for i in range(x.ndim) if i not in axes]
    if len(axes) == 1:
        xr, ax = x, axes[0] - x.ndim
    else:  # the reduced axes moved last and merged
        xr, ax = jnp.transpose(x, rest + list(axes)).reshape(*(x.shape[i] for i in rest), -1), -1
    return _logsumexp(xr, ax, nthreads).reshape(shape)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _logsumexp(x: jax.Array, ax: int, threads: int) -> jax.Array:
    shape = x.shape[: x.ndim + ax] + x.shape[x.ndim + ax + 1 :]
    return _ffi("twopass_softmax", jax.ShapeDtypeStruct(shape, x.dtype))(
        x,
        op=_i(OP_CODES["logsumexp"]),
        lse_op=_i(OP_CODES["logsumexp"]),
        algo=_i(ALGO_CODES["two_pass"]),  # one pass
        axis=_i(ax),
        threads=_i(threads),
        **_common(),
    )


def _logsumexp_fwd(x, ax, threads):
    r = _logsumexp(x, ax, threads)
    return r, (x, r)


def _logsumexp_bwd(ax, threads, res, g):
    x, r = res
    g = g.astype(x.dtype)
    if ax == -1:
        gx = _ffi("twopass_logsumexp_backward", jax.ShapeDtypeStruct(x.shape, x.dtype))(
            g, x, r, op=_i(OP_CODES["logsumexp"]), threads=_i(threads), **_common()
        )
        return (gx,)
    wide = jnp.promote_types(x.dtype, jnp.float32)
    d = x.ndim + ax
    gx = jnp.expand_dims(g.astype(wide), d) * jnp.exp(x.astype(wide) - jnp.expand_dims(r.astype(wide), d))
    return (gx.astype(x.dtype),)


_logsumexp.defvjp(_logsumexp_fwd, _logsumexp_bwd)


# ----------------------------------------------------------------------------------
# cross_entropy
# ----------------------------------------------------------------------------------
def cross_entropy(
    logits: Any,
    target: Any,
    weight: Any,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    threads: int | None,
) -> jax.Array:
    name = "twopass.jax.cross_entropy"
    x = as_float(logits, name)
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {t.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: logits must have a class axis: shape (C,), (N, C) or (N, C, d1, ...), got ()")
    want = () if x.ndim == 1 else (x.shape[0], *x.shape[2:])
    if t.shape != want:
        raise ValueError(f"{name}: target has shape {t.shape}, expected {want} for logits of shape {x.shape}")
    eps, zc, cap = check_options(name, reduction, label_smoothing, z_loss, softcap)
    nthreads = check_threads(threads, name)
    classes = x.shape[-1] if x.ndim == 1 else x.shape[1]
    # Rows of classes, as twopass.cross_entropy: (C,) one row, (N, C, d1, ...) the class axis last.
    rows = x.reshape(1, -1) if x.ndim == 1 else x if x.ndim == 2 else jnp.moveaxis(x, 1, -1).reshape(-1, classes)
    t2 = t.reshape(-1)
    if t2.dtype not in (jnp.int32, jnp.int64):
        t2 = t2.astype(jnp.int32)
    ctype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32  # weight and loss of the kernel
    if weight is None:
        w, has_weight = jnp.zeros((0,), ctype), 0
    else:
        w, has_weight = jnp.asarray(weight, ctype), 1
        if w.shape != (classes,):
            raise ValueError(f"{name}: weight has shape {w.shape}, expected ({classes},)")
    opts = (int(operator.index(ignore_index)), _REDUCTION[reduction], eps, zc, cap, has_weight, nthreads)
    loss = _cross_entropy(rows, t2, w, opts).astype(x.dtype)
    return loss.reshape(t.shape) if reduction == "none" else loss


def _ce_call(x, t, w, opts, grad: bool):
    ignore_index, reduction, eps, zc, cap, has_weight, threads = opts
    ctype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    loss = jax.ShapeDtypeStruct((x.shape[0],) if reduction == 2 else (), ctype)
    outs = (loss, jax.ShapeDtypeStruct(x.shape, x.dtype)) if grad else loss
    algo = "three_pass_reload" if grad else "two_pass"  # as twopass.cross_entropy's "auto"
    return _ffi("twopass_cross_entropy_grad" if grad else "twopass_cross_entropy", outs)(
        x,
        t,
        w,
        algo=_i(ALGO_CODES[algo]),
        ignore_index=_i(ignore_index),
        eps=np.float64(eps),
        zc=np.float64(zc),
        cap=np.float64(cap),
        reduction=_i(reduction),
        has_weight=_i(has_weight),
        threads=_i(threads),
        **_common(),
    )


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _cross_entropy(x: jax.Array, t: jax.Array, w: jax.Array, opts: tuple) -> jax.Array:
    return _ce_call(x, t, w, opts, grad=False)


def _cross_entropy_fwd(x, t, w, opts):
    loss, grad = _ce_call(x, t, w, opts, grad=True)  # the gradient for an upstream 1, fused
    return loss, grad


def _cross_entropy_bwd(opts, grad, g):
    scale = g[:, None] if opts[1] == 2 else g  # "none": one upstream value per row
    wide = jnp.promote_types(grad.dtype, jnp.float32)
    gx = (grad.astype(wide) * scale.astype(wide)).astype(grad.dtype)
    return gx, None, None  # no gradient for the targets, nor (zero) for the class weights


_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)
