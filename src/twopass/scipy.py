"""`scipy.special`'s signatures and defaults over twopass's kernels: a drop-in for

    from scipy.special import log_softmax, logsumexp, softmax

as ``from twopass.scipy import log_softmax, logsumexp, softmax``. SciPy need not be
installed. Real inputs only (float32, float64, float16, bfloat16, integers and booleans,
the last two computed in float64): complex inputs raise TypeError.

`logsumexp`'s weights `b` (any sign, zeros, broadcast against `a`) are folded into the
exponents: ``b * exp(a) = sign(b) * exp(a + log|b|)``. The positive and the negative
terms are each summed by the one-pass kernel, ``P = logsumexp(a + log b | b > 0)`` and
``N = logsumexp(a + log(-b) | b < 0)``, and combined as
``log|e^P - e^N| = max(P, N) + log1p(-exp(-|P - N|))``, whose sign is that of ``P - N``.
A zero weight drops its term whatever `a` is there (SciPy's rule); a NaN weight gives NaN.

Precision near 0: the kernel's ``max + log(s)``, ``s = sum(exp(a - max)) >= 1``, is
accurate to a few ULPs of its largest term, so a result much smaller than 1 loses its
relative precision (``logsumexp([0, -40])`` is 4.2e-18, not 0). Where a result is below
1 in magnitude, it is recomputed with SciPy's formula (gh-18295), the maxima taken out
of the sum: ``max + log(k) + log1p(sum(exp(a - max) | a < max) / k)`` for `k` maxima,
an extra NumPy pass over the array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._arrays import _identity, to_numpy
from ._logsumexp import logsumexp as _logsumexp
from ._softmax import log_softmax as _log_softmax
from ._softmax import softmax as _softmax

__all__ = ["log_softmax", "logsumexp", "softmax"]


def _real(x: Any, name: str) -> Any:
    """`x` itself, or its NumPy array when it was a list or scalar; TypeError if complex."""
    arr, wrap = to_numpy(x, f"twopass.scipy.{name}")
    if arr.dtype.kind == "c":
        raise TypeError(
            f"twopass.scipy.{name}: complex input ({arr.dtype}) is not supported; "
            "twopass computes real inputs only (scipy.special takes complex ones)"
        )
    return x if arr is x or hasattr(x, "__dlpack__") else arr


def softmax(x: ArrayLike, axis: int | tuple[int, ...] | None = None) -> Any:
    """``scipy.special.softmax``: ``exp(x) / sum(exp(x))`` over `axis`, without overflow.

    Parameters
    ----------
    x : array_like
        Real values (see `twopass.softmax` for the dtypes); integers and booleans are
        computed in float64, lists and scalars read with ``np.asarray``.
    axis : int, tuple of ints or None, default None
        The axes normalised together; None: the whole array, as one row.

    Returns
    -------
    ndarray or scalar
        Of the shape of `x`, summing to 1 over `axis`; a scalar for a scalar `x`.

    Raises
    ------
    TypeError
        Complex input, or a dtype twopass does not compute.
    numpy.exceptions.AxisError
        An axis out of range.
    """
    return _softmax(_real(x, "softmax"), axis=axis)


def log_softmax(x: ArrayLike, axis: int | tuple[int, ...] | None = None) -> Any:
    """``scipy.special.log_softmax``: ``x - logsumexp(x)`` over `axis`.

    Never positive; exactly 0 at a maximum that dominates its row.

    Parameters
    ----------
    x : array_like
        Real values (see `twopass.log_softmax` for the dtypes); integers and booleans
        are computed in float64, lists and scalars read with ``np.asarray``.
    axis : int, tuple of ints or None, default None
        The axes normalised together; None: the whole array, as one row.

    Returns
    -------
    ndarray or scalar
        Of the shape of `x`; a scalar for a scalar `x`.

    Raises
    ------
    TypeError
        Complex input, or a dtype twopass does not compute.
    numpy.exceptions.AxisError
        An axis out of range.
    """
    return _log_softmax(_real(x, "log_softmax"), axis=axis)


def logsumexp(
    a: ArrayLike,
    axis: int | tuple[int, ...] | None = None,
    b: ArrayLike | None = None,
    keepdims: bool = False,
    return_sign: bool = False,
) -> Any:
    """``scipy.special.logsumexp``: ``log(sum(b * exp(a)))`` over `axis` (None: all).

    Parameters
    ----------
    a : array_like
        Real values; integers and booleans are computed in float64.
    axis : int, tuple of ints or None, default None
        The axes to reduce; None reduces the whole array.
    b : array_like, optional
        Weights, broadcast against `a`, of any sign; a zero weight drops its term. The
        result's dtype is that of ``a`` and ``b`` together (integers: float64).
    keepdims : bool, default False
        Keep the reduced axes, with length 1.
    return_sign : bool, default False
        Also return the sign of the sum: then the first result is ``log|sum|``. Without
        it, a negative sum gives NaN.

    Returns
    -------
    res : ndarray or scalar
        ``log|sum|`` (``-inf`` for a zero or empty sum), a NumPy scalar for a 0-d result.
    sgn : ndarray or scalar
        With `return_sign`: 1, -1 or 0 (NaN where `res` is NaN), as SciPy, whose sign of
        an empty sum is -1.

    Raises
    ------
    TypeError
        Complex input, or a dtype twopass does not compute.
    numpy.exceptions.AxisError
        An axis out of range.
    ValueError
        `a` and `b` do not broadcast together.

    Examples
    --------
    >>> from twopass.scipy import logsumexp
    >>> logsumexp([1, 2], b=[1, -1], return_sign=True)  # log|e - e^2| and its sign
    (np.float64(1.5413248546129181), np.float64(-1.0))
    """
    a = _real(a, "logsumexp")
    if b is None:
        res = _lse(a, axis, keepdims)
        if not return_sign:
            return res
        r = np.asarray(res)
        sgn = np.where(np.isnan(r), np.nan, np.where(r == -np.inf, 0.0, 1.0)).astype(r.dtype)
        if np.size(a) == 0:
            sgn[...] = -1.0  # scipy: sign(log(0)) of an empty sum
        return res, _scalar(sgn)

    b = _real(b, "logsumexp")
    a_, _ = to_numpy(a, "twopass.scipy.logsumexp")
    b_, _ = to_numpy(b, "twopass.scipy.logsumexp")
    dtype = np.result_type(a_, b_)
    if dtype.kind != "f":
        dtype = np.dtype(np.float64)
    a_, b_ = np.broadcast_arrays(a_.astype(dtype, copy=False), b_.astype(dtype, copy=False))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_b = np.log(np.abs(b_))  # -inf at b == 0: the term drops out
        shifted = a_ + log_b
        shifted[b_ == 0] = -np.inf  # even where a is +inf or NaN (SciPy's rule)
        shifted[np.isnan(b_)] = np.nan
        pos = np.where(b_ < 0, -np.inf, shifted)
        neg = np.where(b_ > 0, -np.inf, shifted)
        neg[b_ == 0] = -np.inf
        neg[np.isnan(b_)] = -np.inf  # counted once, in pos
        p = np.asarray(_lse(pos, axis, keepdims))
        if not np.any(neg != -np.inf):  # no negative weight: the common case
            n = np.full_like(p, -np.inf)
        else:
            n = np.asarray(_lse(neg, axis, keepdims))
        hi, lo = np.maximum(p, n), np.minimum(p, n)
        res = hi + np.log1p(-np.exp(lo - hi))  # log(e^hi - e^lo); -inf where they are equal
        res = np.where(hi == -np.inf, -np.inf, res)  # both empty: a zero sum
        sgn = np.sign(p - n)
        sgn = np.where(hi == -np.inf, 0.0, sgn)
        sgn = np.where(np.isnan(res), np.nan, sgn).astype(res.dtype)
        if a_.size == 0:
            sgn = np.full_like(res, -1.0)
    if return_sign:
        return _scalar(res), _scalar(sgn)
    return _scalar(np.where(sgn < 0, np.nan, res).astype(res.dtype))


def _lse(a: Any, axis: Any, keepdims: bool) -> Any:
    """twopass.logsumexp, its results below 1 in magnitude refined (module docstring)."""
    res = _logsumexp(a, axis=axis, keepdims=keepdims)
    r = np.asarray(res)
    if r.dtype.kind != "f" or r.size == 0:
        return res  # halves (ml_dtypes) keep the kernel's result, accurate to their precision
    small = np.abs(r) < 1  # NaN and infinities are not small
    if not small.any():
        return res
    x, wrap = to_numpy(a, "twopass.scipy.logsumexp")
    x = x.astype(r.dtype, copy=False).reshape(x.shape or (1,))  # a scalar is a row of one
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        amax = np.max(x, axis=axis, keepdims=True)
        shift = np.where(np.isfinite(amax), amax, 0)
        top = x == amax
        k = np.sum(top, axis=axis, keepdims=True, dtype=r.dtype)
        rest = np.sum(np.where(top, 0, np.exp(x - shift)), axis=axis, keepdims=True, dtype=r.dtype)
        fine = (amax + np.log(k) + np.log1p(rest / k)).reshape(r.shape)  # as many elements as r
    out = np.where(small, fine, r).astype(r.dtype)
    return _scalar(out) if wrap is _identity else wrap(out)


def _scalar(r: np.ndarray) -> Any:
    return r[()] if r.ndim == 0 else r
