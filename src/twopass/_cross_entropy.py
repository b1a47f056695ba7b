"""twopass.cross_entropy: the fused loss of docs/cross_entropy.md on the CPU kernels.

One C++ call does the rows: per row one read of the logits from memory gives lse and the
loss terms, and the gradient (when asked for) is written while the row is still in
cache. This layer checks arguments, computes the reduction's scales from the targets
(O(rows)), and reduces the per-row terms in float64. float16 and bfloat16 logits are
converted to float32 a block of rows at a time, so no (rows x classes) temporary is
made beyond the gradient itself (bfloat16 rows are widened inside the kernel, one row
at a time).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from . import _core, _dispatch
from ._api import _ALGO_CODES, _NATIVE, _check_algorithm, _check_threads, _is_half, _to_numpy

REDUCTIONS = ("mean", "sum", "none")
_HALF_BLOCK_BYTES = 1 << 22  # float32 bytes per converted block of half-precision rows


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
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
    """Cross-entropy of `logits` (N, C) against class indices `target` (N,), fused with
    its gradient; the definition (torch's, plus z-loss and soft-capping) is
    docs/cross_entropy.md.

    weight: optional (C,) class weights. ignore_index: rows with this target count for
      nothing. reduction: "mean" | "sum" | "none". label_smoothing: in [0, 1].
    z_loss: coefficient of lse^2 added per row. softcap: c > 0 replaces the logits by
      c * tanh(logits / c) first.
    return_z_loss / return_lse / return_grad: also return the z-loss term (reduced like
      the loss), the per-row lse (float32, float64 for float64 logits), the gradient of
      the loss with respect to the logits (for an upstream gradient of 1).
    grad_out: an (N, C) array of the logits' dtype to write the gradient into (implies
      return_grad); it may be `logits` itself, which then holds the gradient afterwards.
    algorithm: the softmax inside, as in `twopass.softmax`. threads: as in `softmax`.
    isa: force an instruction set (tests and benchmarks; default: the detected one).

    Returns the loss (a 0-d array, or (N,) for "none", of the logits' dtype), or a tuple
    (loss, z_loss?, lse?, grad?) with the requested extras in that order.
    1-D logits (C,) with a 0-d target are one row.
    """
    name = "twopass.cross_entropy"
    x, wrap = _to_numpy(logits, name)
    dtype = x.dtype
    if dtype not in _NATIVE and not _is_half(dtype):
        raise TypeError(f"{name}: unsupported dtype {dtype}; expected float32, float64, float16 or bfloat16")
    t, _ = _to_numpy(target, name)
    one_row = x.ndim == 1
    if one_row:
        x, t = x.reshape(1, -1), np.reshape(t, (1,)) if t.ndim == 0 else t
    if x.ndim != 2:
        raise ValueError(f"{name}: logits must be (N, C) or (C,), got shape {x.shape}")
    rows, classes = x.shape
    if t.dtype.kind not in "iu" or t.dtype == np.uint64:
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {t.dtype}")
    if t.shape != (rows,):
        raise ValueError(f"{name}: target has shape {t.shape}, expected ({rows},)")
    eps, zc, cap = check_options(name, reduction, label_smoothing, z_loss, softcap)
    ignore_index = operator.index(ignore_index)
    algo = _check_algorithm(algorithm, name)
    nthreads = _check_threads(threads, name)

    ctype = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    t = np.ascontiguousarray(t, dtype=np.int64)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: target[{i}] = {t[i]} is outside [0, {classes}) and is not ignore_index")
    w = None
    if weight is not None:
        w, _ = _to_numpy(weight, name)
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
    g = None
    if grad_out is not None:
        g, _ = _to_numpy(grad_out, name, writable=True)
        if one_row and g.ndim == 1:
            g = g.reshape(1, -1)
        _check_grad_out(g, x, name)
    elif want_grad:
        g = np.empty((rows, classes), dtype=dtype)

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
        algo=_ALGO_CODES[algo],
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
    if dtype.name == "bfloat16" and classes and x.strides[1] == 2 and (g is None or g.strides[1] == 2):
        # The kernel widens each row in cache and narrows its gradient back (uint16 views).
        stream = g is not None and g.nbytes > _dispatch.cache_sizes()["L3"] and not np.may_share_memory(g, x)
        _core.cross_entropy(
            x=x.view(np.uint16),
            target=t,
            grad=None if g is None else g.view(np.uint16),
            ce=ce,
            z=z,
            lse=lse,
            stream=stream,
            bf16=True,
            **args,
        )
    elif dtype in _NATIVE:
        xc = x if x.strides[1] == x.itemsize or classes <= 1 else np.ascontiguousarray(x)
        direct = g is None or g.strides[1] == g.itemsize or classes <= 1
        gc = g if direct else np.empty((rows, classes), dtype=dtype)
        # Streaming stores for a gradient too large to stay in cache (not in place: there
        # the lines were just read, so there is no read-for-ownership to save).
        stream = gc is not None and gc.nbytes > _dispatch.cache_sizes()["L3"] and not np.may_share_memory(gc, xc)
        _core.cross_entropy(x=xc, target=t, grad=gc, ce=ce, z=z, lse=lse, stream=stream, **args)
        if not direct:
            g[...] = gc
    else:  # float16 (and odd bfloat16 layouts): blocks of rows through float32
        block = max(1, _HALF_BLOCK_BYTES // max(1, 4 * classes))
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            xb = _to_f32(x[r0:r1])
            gb = xb if g is not None else None  # the block's gradient over its float32 copy
            _core.cross_entropy(
                x=xb, target=t[r0:r1], grad=gb, ce=ce[r0:r1], z=z[r0:r1], lse=lse[r0:r1], stream=False, **args
            )
            if g is not None:
                g[r0:r1] = _from_f32(gb, dtype)

    loss, zterm = _reduce(ce, z, reduction, wt_sum, n_valid)
    out_dtype = dtype
    result = [_as(loss, out_dtype, one_row and reduction == "none", wrap)]
    if return_z_loss:
        result.append(_as(zterm, out_dtype, one_row and reduction == "none", wrap))
    if return_lse:
        result.append(wrap(lse.astype(ctype).reshape(()) if one_row else lse.astype(ctype)))
    if want_grad:
        result.append(_grad_result(grad_out, g, one_row, wrap))
    return result[0] if len(result) == 1 else tuple(result)


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


def _to_f32(a: np.ndarray) -> np.ndarray:
    """float16/bfloat16 to float32. bfloat16 is the upper half of a float32: a shift
    (ml_dtypes' astype converts element by element, ~10x slower)."""
    if a.dtype == np.float16:
        return a.astype(np.float32)
    return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _from_f32(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 to float16/bfloat16, rounding to nearest even (NaN stays NaN)."""
    if dtype == np.float16:
        return a.astype(np.float16)
    u = a.view(np.uint32)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    r[np.isnan(a)] = 0x7FC0
    return r.view(dtype)


def _reduce(ce: np.ndarray, z: np.ndarray, reduction: str, wt_sum: float, n_valid: int):
    if reduction == "none":
        return ce + z, z
    if reduction == "sum":
        zs = z.sum()
        return ce.sum() + zs, zs
    with np.errstate(divide="ignore", invalid="ignore"):
        zs = z.sum() / np.float64(n_valid)
        return ce.sum() / np.float64(wt_sum) + zs, zs


def _as(v: Any, dtype: np.dtype, squeeze: bool, wrap) -> Any:
    a = np.asarray(v, dtype=np.float64).astype(dtype)
    return wrap(a.reshape(()) if squeeze else a)


def _grad_result(grad_out: Any, g: np.ndarray, one_row: bool, wrap) -> Any:
    if grad_out is not None:
        return grad_out
    return wrap(g.reshape(-1) if one_row else g)


def _check_grad_out(g: np.ndarray, x: np.ndarray, name: str) -> None:
    if g.shape != x.shape:
        raise ValueError(f"{name}: grad_out has shape {g.shape}, expected {x.shape}")
    if g.dtype != x.dtype:
        raise ValueError(f"{name}: grad_out has dtype {g.dtype}, expected {x.dtype}")
    if not g.flags.writeable:
        raise ValueError(f"{name}: grad_out is read-only")
    if np.may_share_memory(g, x):
        same = g.__array_interface__["data"][0] == x.__array_interface__["data"][0] and g.strides == x.strides
        if not same:
            raise ValueError(f"{name}: grad_out overlaps logits without being logits itself")
