"""twopass.cross_entropy: the fused loss of docs/cross_entropy.md on the CPU kernels.

One C++ call does the rows: per row one read of the logits from memory gives lse and the
loss terms, and the gradient (when asked for) is written while the row is still in
cache. This layer checks arguments, computes the reduction's scales from the targets
(O(rows)), and reduces the per-row terms in float64. float16 and bfloat16 logits are
widened inside the kernel one row at a time (into a cached float32 row per thread) and
their gradient narrowed back, so no (rows x classes) temporary is made; only logits
whose classes are strided go through float32 a block of rows at a time.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import numpy as np

from . import _alloc, _core, _dispatch
from ._arrays import (
    NATIVE,
    ArrayT,
    check_algorithm,
    check_dtype,
    check_threads,
    dtype_name,
    from_float32,
    native_order,
    streaming_stores,
    to_float32,
    to_numpy,
)
from ._dispatch import ALGO_CODES

REDUCTIONS = ("mean", "sum", "none")
_HALF_BLOCK_BYTES = 1 << 22  # float32 bytes per converted block of half-precision rows


def cross_entropy(
    input: ArrayT,
    target: Any,
    weight: Any = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_z_loss: bool = False,
    return_lse: bool = False,
    return_grad: bool = False,
    grad_out: Any = None,
    algorithm: str = "auto",
    threads: int | None = None,
    isa: str | None = None,
) -> Any:
    """Cross-entropy of logits against class indices, fused with its gradient.

    The arguments of ``torch.nn.functional.cross_entropy``, in its order, then twopass's
    extras, keyword-only. The definition (torch's, plus z-loss and soft-capping) is in
    docs/cross_entropy.md. One read of the logits from memory gives the loss, and the
    gradient when asked for (written while each row is still in cache).

    Parameters
    ----------
    input : array
        Logits, float32, float64, float16 or bfloat16 (NumPy, or a CPU array with
        DLPack such as a ``torch.Tensor``; results are of the same kind): shape (C,),
        (N, C) or (N, C, d1, ..., dK), the class axis being 1 (0 for (C,)).
    target : array of int
        Class indices in [0, C) or `ignore_index`: shape (), (N,) or (N, d1, ..., dK).
        (Class probabilities as targets are not supported.)
    weight : array, optional
        (C,) weights of the classes.
    size_average, reduce : bool, optional
        Deprecated, as in torch: when either is given, they decide `reduction`
        (reduce=False: "none"; else size_average=False: "sum"; else "mean").
    ignore_index : int, default -100
        Targets with this value count for nothing (loss 0, gradient 0, not in the mean).
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides by the sum of the targets' weights (their count without `weight`).
    label_smoothing : float in [0, 1], default 0.0
    z_loss : float >= 0, keyword-only
        Coefficient of ``lse**2`` added per row (PaLM's z-loss); reduced like the loss.
    softcap : float > 0, optional, keyword-only
        Replaces the logits by ``softcap * tanh(logits / softcap)`` first.
    return_z_loss, return_lse, return_grad : bool, keyword-only
        Also return the z-loss term (reduced like the loss), the per-row logsumexp
        (float32; float64 for float64 logits), the gradient of the loss with respect to
        the logits (for an upstream gradient of 1; the shape and dtype of `input`).
    grad_out : array, optional, keyword-only
        Where to write that gradient (implies `return_grad`): the shape and dtype of
        `input`; may be `input` itself, which then holds the gradient afterwards.
    algorithm, threads : keyword-only
        As in `twopass.softmax`. isa: force an instruction set (tests, benchmarks).

    Returns
    -------
    loss or tuple
        The loss, of the logits' dtype: 0-d, or the target's shape for "none"; or a
        tuple ``(loss, z_loss?, lse?, grad?)`` with the requested extras in that order.

    Raises
    ------
    TypeError
        Unsupported dtype of `input`; `target` not of integers.
    ValueError
        Shapes that do not match as above; a target outside [0, C) that is not
        `ignore_index`; an unknown `reduction` or `algorithm`; `label_smoothing`,
        `z_loss` or `softcap` out of range; a `grad_out` of the wrong shape or dtype,
        read-only, or overlapping `input` without being it.
    """
    name = "twopass.cross_entropy"
    reduction = legacy_reduction(size_average, reduce, reduction)
    x, wrap = to_numpy(input, name)
    x = native_order(x)
    dtype = x.dtype
    check_dtype(dtype, name)
    t, _ = to_numpy(target, name)
    if t.dtype.kind not in "iu" or t.dtype == np.uint64:
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {t.dtype}")
    check_target_shape(name, tuple(x.shape), tuple(t.shape))
    eps, zc, cap = check_options(name, reduction, label_smoothing, z_loss, softcap)
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"{name}: ignore_index must be an integer, got {type(ignore_index).__name__}") from None
    algo = check_algorithm(algorithm, name)
    nthreads = check_threads(threads, name)

    # Rows of classes: (C,) is one row; (N, C, d1.., dK) moves the class axis last (a copy).
    x_user, row_shape = x, t.shape
    x = rows_of_classes(x)
    t = t.reshape(-1)
    rows, classes = x.shape
    ctype = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    t = np.ascontiguousarray(t, dtype=np.int64)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: target[{i}] = {t[i]} is outside [0, {classes}) and is not ignore_index")
    w = None
    if weight is not None:
        w, _ = to_numpy(weight, name)
        if w.shape != (classes,):
            raise ValueError(f"{name}: weight has shape {w.shape}, expected ({classes},)")
        w = np.ascontiguousarray(w, dtype=ctype)

    # The reduction's scales (docs/cross_entropy.md): s_ce = 1 / sum of target weights,
    # s_z = 1 / valid rows for "mean".
    tv = t[valid]
    n_valid = int(tv.size)
    wt_sum = float(w[tv].astype(np.float64).sum()) if w is not None else float(n_valid)
    weight_total = float(w.astype(np.float64).sum()) if w is not None else float(classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_ce, s_z = (np.float64(1) / wt_sum, np.float64(1) / n_valid) if reduction == "mean" else (1.0, 1.0)

    want_grad = return_grad or grad_out is not None
    g = g_user = None
    if grad_out is not None:
        g_user, _ = to_numpy(grad_out, name, writable=True)
        _check_grad_out(g_user, x_user, name)
        # Written directly for (C,) and (N, C); through x's copy for (N, C, d1, ...).
        g = rows_of_classes(g_user) if x_user.ndim <= 2 else x if g_user is x_user or _same(g_user, x_user) else None
    fresh = want_grad and g is None  # (streaming_stores: no streaming into fresh pages)
    if fresh:
        g = _alloc.empty((rows, classes), dtype)
        fresh = not _alloc.reused(g)

    if algo == "auto":
        # The loss alone: two_pass's one-pass logsumexp. With the gradient, the reload
        # (exp once per element; the row's later passes hit cache). Measured on
        # 2048 x 32000 float32 (python -m twopass bench): see README.
        algo = "three_pass_reload" if want_grad else "two_pass"
    ce = np.empty(rows)
    z = np.empty(rows)
    lse = np.empty(rows)
    args = dict(
        isa=_dispatch.isa_code(isa),
        algo=ALGO_CODES[algo],
        weight=w,
        weight_total=weight_total,
        ignore_index=ignore_index,
        smoothing=eps,
        z_coef=zc,
        softcap=cap,
        s_ce=float(s_ce),
        s_z=float(s_z),
        threads=nthreads,
    )
    if dtype not in NATIVE and classes and x.strides[1] == 2 and (g is None or g.strides[1] == 2):
        # The kernel widens each row in cache and narrows its gradient back (uint16 views).
        stream = g is not None and streaming_stores(g, x, fresh)
        _core.cross_entropy(
            x=x.view(np.uint16),
            target=t,
            grad=None if g is None else g.view(np.uint16),
            ce=ce,
            z=z,
            lse=lse,
            stream=stream,
            bf16=dtype_name(dtype) == "bfloat16",
            f16=dtype == np.float16,
            **args,
        )
    elif dtype in NATIVE:
        xc = x if x.strides[1] == x.itemsize or classes <= 1 else np.ascontiguousarray(x)
        direct = g is None or g.strides[1] == g.itemsize or classes <= 1
        gc = g if direct else np.empty((rows, classes), dtype=dtype)
        stream = gc is not None and streaming_stores(gc, xc, fresh or not direct)
        _core.cross_entropy(x=xc, target=t, grad=gc, ce=ce, z=z, lse=lse, stream=stream, **args)
        if not direct:
            g[...] = gc
    else:  # halves with strided classes: blocks of rows through float32
        block = max(1, _HALF_BLOCK_BYTES // max(1, 4 * classes))
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            xb = to_float32(x[r0:r1])
            gb = xb if g is not None else None  # the block's gradient over its float32 copy
            _core.cross_entropy(
                x=xb, target=t[r0:r1], grad=gb, ce=ce[r0:r1], z=z[r0:r1], lse=lse[r0:r1], stream=False, **args
            )
            if g is not None:
                g[r0:r1] = from_float32(gb, dtype)

    loss, zterm = _reduce(ce, z, reduction, wt_sum, n_valid)
    shape = row_shape if reduction == "none" else ()
    result = [wrap(_as(loss, dtype, shape))]
    if return_z_loss:
        result.append(wrap(_as(zterm, dtype, shape)))
    if return_lse:
        result.append(wrap(lse.astype(ctype).reshape(row_shape)))
    if want_grad:
        g_full = classes_back(g, x_user.shape)
        if g_user is None:
            result.append(wrap(g_full))
        else:
            if not np.may_share_memory(g_full, g_user):
                g_user[...] = g_full
            result.append(grad_out)
    return result[0] if len(result) == 1 else tuple(result)


def legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's deprecated `size_average` and `reduce`: when either is given, they decide."""
    if size_average is None and reduce is None:
        return reduction
    warnings.warn(
        "size_average and reduce are deprecated (as in torch); use reduction=", DeprecationWarning, stacklevel=3
    )
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


def check_target_shape(name: str, input_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> None:
    """torch's ranks: input (C,) with target (); (N, C) with (N,); (N, C, d1.., dK) with
    (N, d1.., dK)."""
    if len(input_shape) == 0:
        raise ValueError(f"{name}: input must have a class axis: shape (C,), (N, C) or (N, C, d1, ...), got ()")
    want = () if len(input_shape) == 1 else (input_shape[0], *input_shape[2:])
    if tuple(target_shape) != want:
        raise ValueError(
            f"{name}: target has shape {tuple(target_shape)}, expected {want} for input of shape {tuple(input_shape)} "
            "(class indices; class probabilities as targets are not supported)"
        )


def rows_of_classes(x: np.ndarray) -> np.ndarray:
    """(rows, C): (C,) is one row, (N, C) itself, (N, C, d1.., dK) the class axis moved
    last (a copy)."""
    if x.ndim == 1:
        return x.reshape(1, -1)
    if x.ndim == 2:
        return x
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def classes_back(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of rows_of_classes: (rows, C) back to the input's `shape`."""
    if len(shape) <= 2:
        return g.reshape(shape)
    return np.moveaxis(g.reshape((shape[0], *shape[2:], shape[1])), -1, 1)


def check_options(name: str, reduction: str, label_smoothing, z_loss, softcap) -> tuple[float, float, float]:
    """The options every cross_entropy takes (NumPy, torch, vocabulary-parallel), checked:
    (label_smoothing, z_loss, softcap) as floats, softcap 0.0 for none."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")
    zc = float(z_loss)
    if not zc >= 0.0:
        raise ValueError(f"{name}: z_loss must be >= 0, got {z_loss}")
    cap = 0.0 if softcap is None else float(softcap)
    if softcap is not None and not (cap > 0 and np.isfinite(cap)):
        raise ValueError(f"{name}: softcap must be a positive finite number or None, got {softcap}")
    return eps, zc, cap


def _reduce(ce: np.ndarray, z: np.ndarray, reduction: str, wt_sum: float, n_valid: int):
    if reduction == "none":
        return ce + z, z
    if reduction == "sum":
        zs = z.sum()
        return ce.sum() + zs, zs
    with np.errstate(divide="ignore", invalid="ignore"):
        zs = z.sum() / np.float64(n_valid)
        return ce.sum() / np.float64(wt_sum) + zs, zs


def _as(v: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    with np.errstate(over="ignore"):  # a loss beyond float16's range is inf, as torch's
        return np.asarray(v, dtype=np.float64).reshape(shape).astype(dtype)  # one rounding, also to halves


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """The same memory, viewed the same way."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides


def _check_grad_out(g: np.ndarray, x: np.ndarray, name: str) -> None:
    if g.shape != x.shape:
        raise ValueError(f"{name}: grad_out has shape {g.shape}, expected {x.shape}")
    if g.dtype != x.dtype:
        raise ValueError(f"{name}: grad_out has dtype {g.dtype}, expected {x.dtype}")
    if not g.flags.writeable:
        raise ValueError(f"{name}: grad_out is read-only")
    if np.may_share_memory(g, x) and not _same(g, x):
        raise ValueError(f"{name}: grad_out overlaps logits without being logits itself")
