"""NumPy's conventions at the public entries, around the engine (`_softmax.compute`),
which itself takes one integer axis of a float array:

- `axis` an int, a tuple of ints or None (every axis): several axes are reduced as one
  logical row. They are merged into one axis of a view when memory allows (e.g. the
  trailing axes of a C-contiguous array, or the leading ones of a Fortran-ordered one;
  their order within the row does not matter, so they are merged in memory order);
  otherwise they are moved last and copied to C order (`merge_axes`).
- integer and boolean inputs are computed in float64, as SciPy does; lists and Python
  scalars are read with `np.asarray`;
- a 0-d result from NumPy input, without `out`, is returned as a NumPy scalar, as
  NumPy's reductions and ufuncs do.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from ._arrays import _identity, check_out, layout, native_order, to_numpy


def normalize_axes(axis: Any, ndim: int, name: str) -> tuple[int, ...]:
    """`axis` (int, tuple/list of ints or None) as a sorted tuple of distinct axes in
    range(ndim); NumPy's errors for a duplicate (ValueError) or out-of-range axis."""
    axes = range(ndim) if axis is None else (axis if isinstance(axis, (tuple, list)) else (axis,))
    out = []
    for a in axes:
        try:
            k = operator.index(a)
        except TypeError:
            raise TypeError(
                f"{name}: axis must be an integer, a tuple of integers or None, got {type(a).__name__}"
            ) from None
        if not -ndim <= k < ndim:
            raise np.exceptions.AxisError(k, ndim, msg_prefix=name)
        out.append(k % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: duplicate value in 'axis'")
    return tuple(sorted(out))


def _mergeable(a: np.ndarray, red: list[int]) -> bool:
    """Whether the axes `red`, in this order, form one strided axis of `a` (a view)."""
    dims = [k for k in red if a.shape[k] != 1]
    return all(a.strides[i] == a.strides[j] * a.shape[j] for i, j in zip(dims, dims[1:]))


def _kernel_ready(v: np.ndarray, ax: int) -> bool:
    """Whether the engine takes `v` along `ax` without a copy of its own (see _arrays)."""
    lay = layout(v, ax)
    return lay is not None and not (lay[2] == 1 and lay[4] != 1)


def merge_axes(a: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, int, list[int]]:
    """(v, ax, perm): `a.transpose(perm)` with the axes `axes` (two or more) merged into
    the one axis `ax` of `v`; the other axes keep their order. A view when the merged
    axes form one stride and the engine can read the result in place; else a copy."""
    n = math.prod(a.shape[k] for k in axes)
    first, last = axes[0], axes[-1]
    if a.flags.c_contiguous and last - first == len(axes) - 1:  # the common case, without the search
        return a.reshape(a.shape[:first] + (n,) + a.shape[last + 1 :]), first, list(range(a.ndim))
    keep = [k for k in range(a.ndim) if k not in axes]
    red = sorted(axes, key=lambda k: -abs(a.strides[k]))  # memory order: the only one a view can take
    if a.size and _mergeable(a, red):
        here = sum(1 for k in keep if k < first)
        # In place of the first reduced axis (C order: SIMD across what follows), else
        # last, else first (e.g. a transposed array): the first the engine reads in place.
        for p in dict.fromkeys((here, len(keep), 0)):
            perm = keep[:p] + red + keep[p:]
            t = a.transpose(perm)
            v = t.reshape(t.shape[:p] + (n,) + t.shape[p + len(red) :])  # a view: see _mergeable
            if _kernel_ready(v, p):
                return v, p, perm
    perm = keep + list(axes)
    t = a.transpose(perm)
    return t.reshape(t.shape[: len(keep)] + (n,)), len(keep), perm  # a copy, in C order


def call(op: str, x: Any, axis: Any, *, keepdims: bool = False, out: Any = None, engine: Any, **kwargs: Any) -> Any:
    """`engine(op, array, axis=int, ...)` (i.e. `_softmax.compute`) with NumPy's
    conventions (see the module's docstring)."""
    name = f"twopass.{op}"
    arr, wrap = to_numpy(x, name)
    if arr.dtype.kind in "biu":  # as SciPy: integers and booleans in float64
        arr = arr.astype(np.float64)
    arr = native_order(arr)
    numpy_in = wrap is _identity  # NumPy in: 0-d results become scalars
    if isinstance(axis, (tuple, list)) or axis is None:
        axes = normalize_axes(axis, arr.ndim, name) if arr.ndim else (0,)
    else:
        axes = None  # one axis: the engine checks it
    if axes is None or len(axes) == 1:
        # (a 0-d array is a row of one: the engine's convention, axis -1)
        ax = axis if axes is None else (axes[0] if arr.ndim else -1)
        r = engine(op, arr, axis=ax, keepdims=keepdims, out=out, **kwargs)
        if out is not None:
            return out
        return r[()] if numpy_in and isinstance(r, np.ndarray) and r.ndim == 0 else wrap(r)

    # No axis, or several: one logical row, computed on a merged view (or copy).
    if not axes:  # reduce nothing: each element is a row of one
        v, ax, perm = arr[..., None], arr.ndim, list(range(arr.ndim))
    else:
        v, ax, perm = merge_axes(arr, axes)
    r = engine(op, v, axis=ax, keepdims=False, **kwargs)
    if op == "logsumexp":  # the kept axes are in their order: only the reduced ones to restore
        y = r.reshape([1 if k in axes else arr.shape[k] for k in range(arr.ndim)]) if keepdims else r
    else:
        inverse = sorted(range(len(perm)), key=perm.__getitem__)  # (np.argsort costs ~10 us on a list)
        y = r.reshape([arr.shape[k] for k in perm]).transpose(inverse)
    if out is not None:  # written from the temporary (out may be x itself: x was read)
        o = check_out(out, arr, y.shape, y.dtype, name, in_place_ok=op != "logsumexp")
        o[...] = y
        return out
    return y[()] if numpy_in and y.ndim == 0 else wrap(y)
