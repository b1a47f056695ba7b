"""logsumexp on the CPU (NumPy entry): the two-pass algorithm's first pass alone, one
read of x (contiguous rows of at most 4 KiB: max-first, in blocks of rows, the second
pass reading the row from the L1; a non-last axis: max-first on its panels). It runs on
the engine of the softmax family (`_softmax.compute`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _axes
from ._arrays import ArrayT
from ._softmax import _FAST_DTYPES, _numpy_lse, compute


def logsumexp(
    x: ArrayT | ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    keepdims: bool = False,
    out: ArrayT | None = None,
    threads: int | None = None,
) -> ArrayT | Any:
    """``log(sum(exp(x)))`` along `axis`, in one pass over memory.

    Computed as ``max + log(sum(exp(x - max)))`` from (mantissa, exponent) pairs, with
    the maximum found in the same pass: the result is never below the maximum, and equal
    to it when the maximum dominates the row.

    Parameters
    ----------
    x : array_like
        float32, float64, float16 or bfloat16 values: a NumPy array (bfloat16 as
        ``ml_dtypes.bfloat16``), or any CPU array with DLPack such as a ``torch.Tensor``;
        the result is of the same kind. float16 and bfloat16 are computed in float32;
        integers and booleans in float64 (as SciPy); byte-swapped floats (``'>f4'`` on
        x86) as a native copy. Lists and scalars are read with ``np.asarray``.
    axis : int, tuple of ints or None, default -1
        The axis to reduce; negative counts from the end. Several axes (None: all) are
        reduced as one row: in place when they merge into one strided axis of a view
        (e.g. the trailing axes of a C-contiguous array), else through a copy with them
        last; `out` is then written from a temporary.
    keepdims : bool, default False
        Keep the reduced axes, with length 1.
    out : array, optional
        Where to write the result: the reduced shape and the dtype of `x`, writable, not
        overlapping `x`.
    threads : int, optional
        Threads to use; default ``TWOPASS_NUM_THREADS``, else the cores this process
        may use.

    Returns
    -------
    array or scalar
        `x`'s shape without `axis` (length 1 with `keepdims`), of `x`'s dtype and kind;
        a NumPy scalar where NumPy's reductions give one (a 0-d result, no `out`).
        A row with NaN gives NaN, with +inf (and no NaN) +inf, of only -inf or empty
        -inf.

    Raises
    ------
    TypeError
        `x` is not an array, or has another dtype; `axis` or `threads` is not an integer.
    numpy.exceptions.AxisError
        `axis` is out of range.
    ValueError
        `out` has the wrong shape or dtype, is read-only or overlaps `x`; `threads` < 1.

    Examples
    --------
    >>> import numpy as np, twopass
    >>> float(twopass.logsumexp(np.zeros(4, np.float32)))  # log(4)
    1.3862943649291992
    """
    r = _numpy_lse(x, axis, keepdims, out, threads)  # the common small call, in C++ (None: not taken)
    if r is not None:
        return r
    if type(x) is np.ndarray and type(axis) is int and x.dtype in _FAST_DTYPES:
        r = compute("logsumexp", x, axis=axis, out=out, keepdims=keepdims, threads=threads)
        return r[()] if out is None and r.ndim == 0 else r  # NumPy's reductions give a scalar
    return _axes.call("logsumexp", x, axis, keepdims=keepdims, out=out, threads=threads, engine=compute)
