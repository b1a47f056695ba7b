"""logsumexp on the CPU (NumPy entry): the two-pass algorithm's first pass alone, one
read of x. It runs on the engine of the softmax family (`_softmax.compute`)."""

from __future__ import annotations

from ._arrays import ArrayT
from ._softmax import compute


def logsumexp(
    x: ArrayT, axis: int = -1, *, keepdims: bool = False, out: ArrayT | None = None, threads: int | None = None
) -> ArrayT:
    """``log(sum(exp(x)))`` along `axis`, in one pass over memory.

    Computed as ``max + log(sum(exp(x - max)))`` from (mantissa, exponent) pairs, with
    the maximum found in the same pass: the result is never below the maximum, and equal
    to it when the maximum dominates the row.

    Parameters
    ----------
    x : array
        float32, float64, float16 or bfloat16 values: a NumPy array (bfloat16 as
        ``ml_dtypes.bfloat16``), or any CPU array with DLPack such as a ``torch.Tensor``;
        the result is of the same kind. float16 and bfloat16 are computed in float32.
    axis : int, default -1
        The axis to reduce; negative counts from the end.
    keepdims : bool, default False
        Keep the reduced axis, with length 1.
    out : array, optional
        Where to write the result: the reduced shape and the dtype of `x`, writable, not
        overlapping `x`.
    threads : int, optional
        Threads to use; default ``TWOPASS_NUM_THREADS``, else the cores this process
        may use.

    Returns
    -------
    array
        `x`'s shape without `axis` (length 1 with `keepdims`), of `x`'s dtype and kind.
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
    return compute("logsumexp", x, axis=axis, out=out, keepdims=keepdims, threads=threads)
