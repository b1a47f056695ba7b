"""Extended-precision NumPy references: slow, simple, independent of the C++ core.

They compute in np.longdouble (80-bit on x86-64: 11 more bits than float64), so that
they are accurate enough to judge float64 kernels too.

The tests and the accuracy report compare every kernel against these. Special values
follow torch's (docs/design.md): a row holding NaN or +inf, or only -inf, gives NaN for
softmax and log_softmax; logsumexp gives NaN, +inf or -inf respectively; an empty axis
gives -inf for logsumexp.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_WIDE = np.longdouble


def _max_and_log_sum(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows moved last, in extended precision; their finite-safe maximum m; log(sum(exp(r - m)))."""
    r = np.moveaxis(np.asarray(x).astype(_WIDE), axis, -1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore"):
        m = np.max(r, axis=-1, keepdims=True, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0)
        log_s = np.log(np.sum(np.exp(r - m), axis=-1, keepdims=True))
    return r, m, log_s


def _special(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: holds NaN, holds +inf, is all -inf (or empty)."""
    return np.isnan(r).any(-1), (r == np.inf).any(-1), (r == -np.inf).all(-1)


def logsumexp(x: npt.ArrayLike, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(x))) along `axis`, in extended precision.

    Parameters
    ----------
    x : array_like
        Any real values.
    axis : int, default -1
    keepdims : bool, default False

    Returns
    -------
    numpy.ndarray
        float64; NaN for a row with NaN, +inf for one with +inf, -inf for one of only
        -inf or an empty one.
    """
    r, m, log_s = _max_and_log_sum(x, axis)
    nan, posinf, neginf = _special(r)
    out = (m + log_s)[..., 0]
    out = np.where(neginf, -np.inf, np.where(posinf, np.inf, out))
    out = np.where(nan, np.nan, out).astype(np.float64)
    return np.expand_dims(out, axis) if keepdims else out


def log_softmax(x: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """``(x - max) - log(sum(exp(x - max)))`` along `axis`, in extended precision.

    Parameters
    ----------
    x : array_like
        Any real values.
    axis : int, default -1

    Returns
    -------
    numpy.ndarray
        float64, of x's shape; rows with NaN, +inf or only -inf are NaN.
    """
    out = _log_softmax_wide(x, axis)
    return np.moveaxis(out, -1, axis).astype(np.float64)


def _log_softmax_wide(x: np.ndarray, axis: int) -> np.ndarray:
    r, m, log_s = _max_and_log_sum(x, axis)
    nan, posinf, neginf = _special(r)
    with np.errstate(invalid="ignore"):
        y = (r - m) - log_s
    return np.where((nan | posinf | neginf)[..., None], np.nan, y)


def softmax(x: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """``exp(log_softmax(x))`` along `axis`, rounded to float64 only at the end.

    Parameters
    ----------
    x : array_like
        Any real values.
    axis : int, default -1

    Returns
    -------
    numpy.ndarray
        float64, of x's shape; rows with NaN, +inf or only -inf are NaN.
    """
    with np.errstate(invalid="ignore", under="ignore"):
        y = np.exp(_log_softmax_wide(x, axis))
    return np.moveaxis(y, -1, axis).astype(np.float64)
