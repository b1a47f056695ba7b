"""softmax and log_softmax on the CPU (NumPy entry), the engine they share with
logsumexp (`compute`: checks, layout, dtypes, then one C++ call), and the rule by which
algorithm="auto" picks an algorithm. Shared argument and array helpers: `_arrays`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _alloc, _axes, _core, _dispatch
from ._arrays import (
    NATIVE,
    ArrayT,
    check_algorithm,
    check_dtype,
    check_out,
    check_threads,
    dtype_name,
    is_bfloat16,
    layout,
    normalize_axis,
    out_layout,
    streaming_stores,
    to_numpy,
)
from ._dispatch import ALGO_CODES, DTYPE_CODES, OP_CODES

_COMMON_DOC = """
    Parameters
    ----------
    x : array_like
        float32, float64, float16 or bfloat16 values: a NumPy array (bfloat16 as
        ``ml_dtypes.bfloat16``), or any CPU array with DLPack such as a ``torch.Tensor``;
        the result is of the same kind. float16 and bfloat16 are computed in float32;
        integers and booleans in float64 (as SciPy); byte-swapped floats (``'>f4'`` on
        x86) as a native copy. Lists and scalars are read with ``np.asarray``; a 0-d
        NumPy result is returned as a NumPy scalar.
    axis : int, tuple of ints or None, default -1
        The axis to normalise; negative counts from the end. Any single axis is computed
        in place in memory (no transpose). Several axes (None: all) are normalised as one
        row: in place when they merge into one strided axis of a view (e.g. the trailing
        axes of a C-contiguous array), else through a copy with them last; `out` is
        then written from a temporary.
    out : array, optional
        Where to write the result: the shape and dtype of `x`, writable; may be `x`
        itself (in place).
    algorithm : {"auto", "two_pass", "three_pass_reload", "three_pass_recompute", "online"}
        How the row is traversed (docs/algorithms.md). "auto" picks from the caches, the
        instruction set and the thread count.
    threads : int, optional
        Threads to use; default ``TWOPASS_NUM_THREADS``, else the cores this process
        may use.
"""
_RAISES_DOC = """
    Raises
    ------
    TypeError
        `x` is not an array, or has another dtype; `axis` or `threads` is not an integer.
    numpy.exceptions.AxisError
        `axis` is out of range.
    ValueError
        `out` has the wrong shape or dtype, is read-only or overlaps `x` without being
        `x`; `algorithm` is unknown; `threads` < 1.
"""


def softmax(
    x: ArrayT | ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    out: ArrayT | None = None,
    algorithm: str = "auto",
    threads: int | None = None,
) -> ArrayT | Any:
    """Softmax along `axis`: ``exp(x) / sum(exp(x))``, without overflow.
    {common}
    Returns
    -------
    array
        Of the shape, dtype and kind of `x` (`out` when given), each row in [0, 1]
        summing to 1. A row holding NaN or +inf, or only -inf, gives NaN; -inf entries
        of other rows give 0; an empty array gives an empty array (as ``torch.softmax``).
    {raises}
    Examples
    --------
    >>> import numpy as np, twopass
    >>> twopass.softmax(np.array([1.0, 2.0, 3.0], np.float32))
    array([0.09003057, 0.24472849, 0.66524094], dtype=float32)
    """
    y = _numpy_rows(x, axis, out, algorithm, threads, False)  # the common small call, in C++ (None: not taken)
    if y is not None:
        return y
    if type(x) is np.ndarray and type(axis) is int and x.ndim and x.dtype in NATIVE:
        return compute("softmax", x, axis=axis, out=out, algorithm=algorithm, threads=threads)
    return _axes.call("softmax", x, axis, out=out, algorithm=algorithm, threads=threads, engine=compute)


def log_softmax(
    x: ArrayT | ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    out: ArrayT | None = None,
    algorithm: str = "auto",
    threads: int | None = None,
) -> ArrayT | Any:
    """Log-softmax along `axis`: ``x - logsumexp(x)``.

    The last pass computes no exponential: ``y = (x - max) - log(s)`` with
    ``s = sum(exp(x - max)) >= 1``, so ``y <= 0`` everywhere and ``y == 0`` exactly at a
    maximum that dominates its row.
    {common}
    Returns
    -------
    array
        Of the shape, dtype and kind of `x` (`out` when given). A row holding NaN or
        +inf, or only -inf, gives NaN; -inf entries of other rows give -inf.
    {raises}
    Examples
    --------
    >>> import numpy as np, twopass
    >>> twopass.log_softmax(np.array([0.0, 0.0], np.float32))
    array([-0.6931472, -0.6931472], dtype=float32)
    """
    y = _numpy_rows(x, axis, out, algorithm, threads, True)  # the common small call, in C++ (None: not taken)
    if y is not None:
        return y
    if type(x) is np.ndarray and type(axis) is int and x.ndim and x.dtype in NATIVE:
        return compute("log_softmax", x, axis=axis, out=out, algorithm=algorithm, threads=threads)
    return _axes.call("log_softmax", x, axis, out=out, algorithm=algorithm, threads=threads, engine=compute)


for _f in (softmax, log_softmax):
    if _f.__doc__:  # None under python -OO
        _f.__doc__ = _f.__doc__.replace("{common}", _COMMON_DOC).replace("{raises}", _RAISES_DOC)


# ----------------------------------------------------------------------------------
# The engine of softmax, log_softmax and logsumexp.
# ----------------------------------------------------------------------------------
def compute(
    op: str,
    x: Any,
    *,
    axis: int = -1,
    out: Any = None,
    keepdims: bool = False,
    algorithm: str = "auto",
    threads: int | None = None,
    isa: str | None = None,
    stream: bool | None = None,
) -> Any:
    """Every public function in one place. `isa` and `stream` (force streaming stores
    on or off) are for tests and the benchmark; `algorithm` also applies to logsumexp
    here ("two_pass": one pass; the others: maximum first)."""
    if (
        type(x) is np.ndarray
        and isa is None
        and stream is None
        and type(axis) is int
        and (axis == -1 or axis == x.ndim - 1)
        and x.ndim
        and x.size
        and x.dtype in _FAST_DTYPES
        and x.flags.c_contiguous
        and type(algorithm) is str
        and (algorithm == "auto" or algorithm in ALGO_CODES)
        and (threads is None or (type(threads) is int and threads >= 1))
        and (out is None or _fast_out_ok(x, out, op, keepdims))
    ):
        return _fast(op, x, keepdims, out, algorithm, threads)  # the common calls, without the general checks below
    name = f"twopass.{op}"
    if op not in OP_CODES:
        raise ValueError(f"unknown op {op!r}")
    arr, wrap = to_numpy(x, name)
    dtype = arr.dtype
    check_dtype(dtype, name)
    if dtype not in _FAST_DTYPES:  # bfloat16, seen for the first time
        _FAST_DTYPES[dtype] = DTYPE_CODES[dtype.name]
        _core.numpy_bfloat16(dtype)
    scalar_input = arr.ndim == 0
    arr0 = arr
    if scalar_input:  # a 0-d array is a row of one; results and out keep shape ()
        arr = arr.reshape(1)
    ax = normalize_axis(axis, arr.ndim, name)
    algo = check_algorithm(algorithm, name)
    nthreads = check_threads(threads, name)
    isa_code = _dispatch.isa_code(isa)

    if op == "logsumexp":
        shape = arr.shape[:ax] + ((1,) if keepdims else ()) + arr.shape[ax + 1 :]
    else:
        shape = arr.shape
    out_arr = None
    if out is not None:
        user_shape = () if scalar_input else shape
        out_arr = check_out(out, arr0, user_shape, dtype, name, in_place_ok=op != "logsumexp")
        out_arr = out_arr.reshape(shape)

    if arr.size == 0:  # nothing to read: empty results, or -inf (the empty sum's log)
        y = np.full(shape, -np.inf if op == "logsumexp" else 0, dtype=dtype)
        if out_arr is not None:
            np.copyto(out_arr, y)
            return out
        return wrap(y.reshape(()) if scalar_input and op != "logsumexp" else y)

    # float16/bfloat16 are read and written as such by the kernels (computed in float32
    # in registers), passed as uint16 views with their dtype code.
    xc = arr
    lay = layout(xc, ax)
    if lay is None or (lay[2] == 1 and lay[4] != 1):  # see _arrays' docstring
        xc = np.ascontiguousarray(xc)
        lay = layout(xc, ax)
    outer, n, inner, xs_outer, xs_n = lay

    # The output: straight into `out` when its layout allows, else via a temporary.
    direct = out_arr is not None
    y = out_arr if direct else _alloc.empty(shape, xc.dtype)
    y3 = out_layout(y, ax, op, keepdims)
    if y3 is None:
        y = _alloc.empty(shape, xc.dtype)
        y3 = out_layout(y, ax, op, keepdims)
        direct = False
    ys_outer, ys_n = y3
    if op == "logsumexp":
        code = ALGO_CODES["two_pass"] if algo == "auto" else ALGO_CODES[algo]
    else:
        code = ALGO_CODES[auto_algorithm(op, xc.dtype, n, xc.size, nthreads, isa, inner) if algo == "auto" else algo]
    if stream is None:
        stream = streaming_stores(y, xc, fresh=not direct and not _alloc.reused(y))
    if dtype in NATIVE:
        args, dtype_code = (xc, y), -1
    else:
        args, dtype_code = (xc.view(np.uint16), y.view(np.uint16)), DTYPE_CODES[dtype_name(dtype)]
    dims = (outer, n, inner, xs_outer, xs_n, ys_outer, ys_n)
    _core.run(OP_CODES[op], code, isa_code, *args, *dims, nthreads, bool(stream), dtype_code)

    if out_arr is not None:
        if not direct:
            out_arr[...] = y
        result = out_arr
    else:
        result = y
    if scalar_input and op != "logsumexp":
        result = result.reshape(())
    return wrap(result) if out is None else out


def _fast(
    op: str, x: np.ndarray, keepdims: bool, out: np.ndarray | None, algorithm: str, threads: int | None
) -> np.ndarray:
    """compute() for a non-empty C-contiguous float32/float64/float16/bfloat16 NumPy
    array over its last axis, `out` None or a fitting C-contiguous array (_fast_out_ok),
    `threads` None or a positive int: the same C++ call as the general path, with ~1.5 us
    of Python instead of ~5 (what decides rows of a few thousand elements)."""
    n = x.shape[-1]
    outer = x.size // n
    nthreads = _dispatch.default_threads() if threads is None else threads
    dtype_code = _FAST_DTYPES[x.dtype]
    if op == "logsumexp":
        y = _alloc.empty(x.shape[:-1] + ((1,) if keepdims else ()), x.dtype) if out is None else out
        code, ys_outer = (0 if algorithm == "auto" else ALGO_CODES[algorithm]), 1
    else:
        y = _alloc.empty(x.shape, x.dtype) if out is None else out
        if algorithm != "auto":
            code = ALGO_CODES[algorithm]
        elif dtype_code >= 0:  # the halves' own rule
            code = ALGO_CODES[auto_algorithm(op, x.dtype, n, x.size, nthreads)]
        elif op == "log_softmax":  # _auto_algorithm's rule for it, without the cost of a call
            code = _RELOAD_CODE if n * x.itemsize < SHORT_ROW_BYTES else _TWO_PASS_CODE
        elif x.nbytes <= _SMALL_SOFTMAX_BYTES:
            code = _RELOAD_CODE  # what _auto_algorithm says for a softmax in cache, without its cost
        else:
            code = ALGO_CODES[auto_algorithm(op, x.dtype, n, x.size, nthreads)]
        ys_outer = n
    stream = streaming_stores(y, x, fresh=out is None and not _alloc.reused(y))
    xa, ya = (x, y) if dtype_code < 0 else (x.view(np.uint16), y.view(np.uint16))  # halves as uint16 views
    _core.run(
        OP_CODES[op],
        code,
        _dispatch.isa_code(None),
        xa,
        ya,
        outer,
        n,
        1,
        n,
        1,
        ys_outer,
        1 if op != "logsumexp" else 0,
        nthreads,
        stream,
        dtype_code,
    )
    return y


def _fast_out_ok(x: np.ndarray, out: Any, op: str, keepdims: bool) -> bool:
    """`out` is x itself (not for logsumexp), or a writable C-contiguous array of the
    result's shape and x's dtype that does not overlap x: what the general path would
    accept and write directly."""
    if op == "logsumexp":
        shape = x.shape[:-1] + ((1,) if keepdims else ())
        if out is x:
            return False
    else:
        shape = x.shape
    return (
        type(out) is np.ndarray
        and out.shape == shape
        and out.dtype == x.dtype
        and out.flags.c_contiguous
        and out.flags.writeable
        and (out is x or not np.may_share_memory(out, x))
    )


# ----------------------------------------------------------------------------------
# algorithm="auto": from the cache sizes, the ISA and the thread count.
# ----------------------------------------------------------------------------------
# The three-pass reload computes exp once per element, two_pass twice; two_pass moves
# 2R + 1W of the row, the reload 3R + 2W. So the reload wins where its second and third
# passes read from cache, or where one exp costs more than the extra traffic (float64:
# its exp polynomial has 2.5x float32's degree, on half the lanes). log_softmax computes
# exp once either way and two_pass makes one pass fewer: the reload only helps rows so
# short that its blocks of rows per kernel call (rows_reload) save per-row costs.
#
# softmax. w = EXP_WEIGHT[dtype, ISA] is how much one exp per element weighs against
# the traffic, relative to float32 on AVX-512 (float64 has half the lanes and a 2.5x
# longer polynomial; AVX2 half the lanes and no vscalef; twice that again where AVX2
# runs at half width: exp_weight). Sizes below count elements at
# float32's 8 bytes of x and y (float64 is measured per element, not per byte). Then
# (`python -m twopass bench --tune`, hot and cold, 1 and 2 threads, AVX-512 and AVX2;
# README, "algorithm"):
# - the reload while the call's x and y fit the cache a core can count on,
#   min(w/2 x L3, 16 w x L2), a quarter of the L2 on a many-core mesh L3
#   (_dispatch.mesh_l3).
#   A server's L3 is shared by dozens of cores and tenants,
#   so its size says little about what one core keeps or how fast it reads it back (a
#   float32 row of 2^24, x and y 128 MiB, on a Xeon with a 300 MiB L3 ran cold 1.4x
#   faster with two_pass): the private L2 bounds what is counted on;
# - beyond that the rows stream from memory (two_pass writes with streaming stores):
#   the reload while one row's x and y fit w^2 x L2 (float32 64x262144, rows of 2 MiB,
#   AVX-512: two_pass 1.2x faster; AVX2: the reload 1.2x faster). Where the exp is
#   cheapest (w = 1), several threads together are bound by memory and two_pass's 2
#   transfers per element beat the reload's 3 (float32 4096x4096, 2 threads: 1.13x),
#   except in rows shorter than SHORT_ROW_BYTES, where the reload's row blocks save
#   per-row costs (65536x64: 2x);
# - where the exp dominates (w >= 4), one thread never outruns memory: the reload at
#   any size (float64 on AVX2, 2^24 and 2^26: 1.07x and 1.10x);
# - a row that several threads split along its axis: the reload, its passes 1 and 2
#   fused per chunk (two parallel regions, x read once), while x and y fit the L3 (or
#   the smaller cache above); two_pass beyond, unless the exp outweighs memory on every
#   thread, w >= 4 per thread (float64 on a half-width AVX2, w = 8, 2 threads: the
#   reload 1.15x faster from 4M to 64M). Zen 4 VM (1 MiB L2, 32 MiB L3), 2 threads,
#   `bench --tune`, reload / two_pass, hot / cold: AVX-512 float64 rows of 64K..2M
#   0.77-0.83 / 0.85-0.92 (before the fused split: 0.79-0.86 hot, 0.98-1.17 cold), 4M
#   0.86, 8M 0.95, 16M 1.31; float32 64K..4M 0.89-0.95 / 0.90-1.05, 8M 0.98, 16M 1.42;
#   AVX2 float32 64K..4M 0.80-0.88 / 0.80-0.92, 8M 0.98, 16M 0.94; float64 64K..4M
#   0.76-0.82 / 0.78-0.82, 8M 1.08.
#
# Where the exp is cheapest (w = 1: AVX-512, float32 and float64), the exp-heavy passes
# prefetch 8 KiB ahead (TWOPASS_PREFETCH_BYTES) and the reload fuses its max pass into
# its exp pass block by block (csrc/kernels/softmax_passes.cpp, fused_max_exp), so both
# overlap memory with arithmetic: on one thread the reload then wins hot and stays level
# cold while the call's x and y fit the L3 (Zen 5 VM, 1 MiB L2, 32 MiB L3, `bench --tune`,
# reload / two_pass, hot / cold: float32 rows of 64K-128K 0.85 / 0.83, 256K 0.88 / 0.99,
# 1M 0.86 / 1.04, 4M 0.91 / 1.08, 32x128256 0.81 / 1.05; float64 rows of 256K 0.78 /
# 0.81, 4M 0.90 / 0.90, 32x128256 0.77 / 0.81). Several threads together are bound by
# memory, where two_pass's 2 transfers per element beat the reload's 3-4: the reload
# while x and y fit the L2 (float32 32x128256 on 2 threads: 0.88 hot, 1.19 cold).
# Beyond, two_pass but in short rows. (A mesh L3 keeps its measured rule below.)
EXP_WEIGHT = {(4, "avx512"): 1, (8, "avx512"): 1, (4, "simd"): 2, (8, "simd"): 4, (4, "scalar"): 8, (8, "scalar"): 8}
_SMALL_SOFTMAX_BYTES = 1 << 16  # x of a softmax below this: x and y fit any cache counted on (>= 128 KiB)
_RELOAD_CODE, _TWO_PASS_CODE = ALGO_CODES["three_pass_reload"], ALGO_CODES["two_pass"]


# The dtypes compute()'s fast path takes, with the dtype code _core.run gets (-1: computed
# as itself; halves: passed as uint16 views). ml_dtypes' bfloat16 joins on its first call
# through the general path (importing ml_dtypes here would cost every import of twopass).
_FAST_DTYPES: dict[np.dtype, int] = {**{dt: -1 for dt in NATIVE}, np.dtype(np.float16): DTYPE_CODES["float16"]}
SHORT_ROW_BYTES = 2048  # rows shorter than this take the reload's row blocks (log_softmax; softmax, w = 1)
_MIN_PER_THREAD = _core.MIN_PER_THREAD  # elements per thread of a batch (csrc/threads.h)
_MIN_PER_CHUNK = _core.MIN_PER_CHUNK  # elements per chunk of a row split along its axis
_RELOAD_SCRATCH_BYTES = _core.RELOAD_SCRATCH_BYTES  # the reload's scratch row for short rows (rows_reload)
_RELOAD_WIDE_ROW = _core.RELOAD_WIDE_ROW_ELEMENTS  # halves' longer rows: exp in a float32 row up to this
_FLOAT32 = np.dtype(np.float32)
# The common small call in one C++ call (csrc/numpy_rows.cpp): a C-contiguous float32,
# float64, float16 or bfloat16 array of at most _SMALL_SOFTMAX_BYTES over its last axis,
# `out` None or fitting, any algorithm, threads None or given (logsumexp: keepdims a
# bool); what _fast does (same kernel, algorithm, ISA and threads: the same bits), or
# None. A 1K float32 softmax, Zen 4, 1 thread: see the README. (_core.numpy_init, at the
# end of this module, once the rule's limits are known.)
_numpy_rows = _core.numpy_rows
_numpy_lse = _core.numpy_lse  # logsumexp's small call, the same way (src/twopass/_logsumexp.py)
_limits: dict[tuple[int, str | None], tuple[int, int, int, int, int, int]] = {}  # (itemsize, isa): see _reload_limits


def exp_weight(itemsize: int, isa: str | None) -> int:
    """EXP_WEIGHT for the dtype and ISA (None: the selected one), doubled where the core
    runs the vectors as two halves: each vector op, the exp's included, costs two.
    - AVX2 on AMD Zen and Zen+ (256-bit ops in two): Zen 1 VM (512 KiB L2, 8 MiB L3,
      `bench --tune`, reload / two_pass, float32 softmax): one thread 0.65-0.91 at every
      size up to 64M; 2 threads on a split row 0.69-0.74 up to 1M and 0.95-1.16 beyond;
      float64 on 2 threads 0.86-0.87 from 4M to 64M. So w = 4 for float32 there, as for
      float64 on a full-width core.
    - float64 on AMD Zen 4's AVX-512 (512-bit ops in two): w = 2, as on a full-width AVX2.
      Zen 4 VM (1 MiB L2, 32 MiB L3, `bench --tune`, 2026-12-05, reload / two_pass):
      float64 4096x4096 0.89 (1 thread) and 0.92 (2), 64x262144 0.93 and 0.96, 32x128256
      on 2 threads 0.80-0.83. float32 keeps w = 1 there: its exp, even doubled, stays
      below the traffic (64x262144, 1 thread: two_pass 1.32x faster, where w = 2 would
      take the reload)."""
    name = isa or _dispatch.ISA
    w = EXP_WEIGHT[itemsize, name if name in ("avx512", "scalar") else "simd"]
    half = (name == "avx2" and _dispatch.avx2_half_width()) or (
        name == "avx512" and itemsize == 8 and _dispatch.avx512_half_width()
    )
    return 2 * w if half else w


def _reload_limits(itemsize: int, isa: str | None) -> tuple[int, int, int, int, int, int]:
    """(w, cache, cache on several threads, streamed row, split row, float16's streamed
    row): the exp's weight, the x + y bytes up to which softmax takes the reload, and
    (itemsize 4, 0 for none) the rows beyond which float16 takes two_pass instead
    (_f16_streams)."""
    w = exp_weight(itemsize, isa)
    caches = _dispatch.cache_sizes()
    per_byte = itemsize // 4  # elements at float32's size
    cache = int(min(w / 2 * caches["L3"], 16 * w * caches["L2"])) * per_byte
    stream_row = w * w * caches["L2"] * per_byte
    several = cache
    if w == 1:  # see above: the L3 on one thread, the L2 on several; beyond, two_pass but in short rows
        cache, several, stream_row = caches["L3"] * per_byte, caches["L2"] * per_byte, 0
    if _dispatch.mesh_l3(caches) and w <= 2:
        # A many-core server L3 (a mesh: 300-480 MiB over 2 MiB L2s) serves one core at
        # about its DRAM bandwidth: the reload's passes 2 and 3 only gain from the private
        # L2. Sapphire-Rapids-class VM, 480 MiB L3, AVX-512 (`bench --tune --quick`): rows
        # of 256K..4M floats, x + y 2..32 MiB, ran 1.1-1.4x faster with two_pass, hot and
        # cold; rows of 16K and 4096x4096 (rows of 32 KiB) faster with the reload. Rows
        # streamed on several threads too: the reload while one row's x and y fit that
        # quarter (Xeon VM, 504 MiB L3, full `bench --tune`, 2 threads, reload / two_pass,
        # hot / cold: float64 4096x4096 0.87 / 0.76, float32 4096x4096 1.02 / 0.99;
        # rows of 1-2 MiB, 32x128256 and 64x262144, two_pass: 1.11-1.44).
        cache = several = stream_row = caches["L2"] // 4 * per_byte
    # A row split along its axis over the threads: the reload (its passes 1 and 2 fused
    # per chunk, csrc/softmax.cpp, reload_split) while its x and y fit the L3 (or the
    # smaller cache above); beyond, every thread streams from memory and two_pass's 2
    # transfers per element win.
    split_row = min(cache, caches["L3"] * per_byte)
    if w == 2 and not _dispatch.mesh_l3(caches):
        # One thread, w = 2: the reload while x and y fit 4 L3s. Beyond the L3 the
        # reload's extra read and write of y cost about what two_pass's second exp does
        # (Zen 4 VM, 32 MiB L3, `bench --tune`, one thread, two_pass / reload: float32 on
        # AVX2 4M 1.29, 8M 1.20, 16M 1.10, 32M 1.06, 64M 0.96; float64 on its half-width
        # AVX-512 4M 1.17, 8M 0.93, 16M 0.93): within 10% either way up to 4 L3s.
        cache = max(cache, 4 * caches["L3"] * per_byte)
    f16_row = caches["L2"] // 16 if _dispatch.mesh_l3(caches) and w <= 2 else 0  # see _f16_streams
    limits = _limits[itemsize, isa] = (w, cache, several, stream_row, split_row, f16_row)
    return limits


def _f16_streams(n: int, size: int, isa: str | None) -> bool:
    """A float16 softmax that float32's rule gives the reload takes two_pass instead
    under a mesh L3 (where that rule, for w <= 2, streams rows of up to a quarter of the
    L2 through the reload): rows longer than a sixteenth of the L2 (x and y in float32
    bytes) in a call that does not fit that quarter. float16's reload from memory costs
    ~12% more than bfloat16's: its narrowing in pass 3 (vcvtps2ph), free in L1 but not
    when the stores miss (Xeon VM, tools/kernel_bench.cpp, 2048 rows of 4096 in the L3,
    ns per element: bfloat16 0.38-0.41, bfloat16 narrowed by vcvtps2ph 0.46, widened by
    vcvtph2ps 0.38-0.39; one row in L1: float16 0.30, bfloat16 0.32). AVX512-FP16's
    vcvtps2phx did not help (0.45-0.46), nor two narrowed vectors per 64-byte store (from
    memory 0.69 -> 0.75: the stores split over lines).
    Xeon VM (2 MiB L2, 260 MiB L3), `bench --tune --dtypes float16`, two_pass / reload:
    rows of 32000 on 1 and 2 threads cold 0.73-0.87, hot 0.91-1.03; 4096x4096 (rows of
    32 KiB) keeps the reload: cold 0.88, hot 1.16-1.18."""
    limits = _limits.get((4, isa)) or _reload_limits(4, isa)
    row = limits[5]  # L2 / 16, or 0 for none
    return row > 0 and 8 * n > row and 8 * size > limits[1]  # limits[1]: the mesh rule's L2 / 4


def _split_row(n: int, size: int, threads: int) -> bool:
    """The driver splits rows along their axis over the threads (csrc/softmax.cpp,
    run_typed): fewer rows than threads, each long enough for two chunks."""
    return threads > 1 and size >= 2 * _MIN_PER_THREAD and n >= 2 * _MIN_PER_CHUNK and size // n < threads


# Over a non-last axis (inner > 1) the kernels take panels of columns, four vectors wide
# (docs/design.md): either algorithm reads a panel once from memory, and the max-first
# ones read it again from the L2 (softmax through a scratch panel: exp computed once)
# where two_pass computes exp twice. The reload then, for every panel of log_softmax and
# of the halves, and for float32/float64 softmax while a panel fits the L2 (beyond it,
# the rows' rule). Xeon VM (2 MiB L2, 260 MiB L3), one thread, in the L3,
# `tools/ab_builds.py`, reload / two_pass time: 0.05-0.78 (4096x4096 over dim 0:
# float32 softmax 0.62, log_softmax 0.78, float16 0.57 / 0.78, bfloat16 0.64 / 0.44;
# float64 0.93-0.96); panels beyond the L2 (16384x1024 over dim 0): float32 and float64
# softmax 1.10 / 1.13, log_softmax 0.92, the halves 0.62-0.73.
# Except a softmax panel of steps a row apart (inner wider than the panel) too long for
# its scratch panel (softmax.cpp: float32 4096 steps, float64 32): there the reload's
# pass 2 stores exp in y, evicted before pass 3 reads it back, and the recompute's third
# read of x and second exp cost less, from a sixteenth of the L2 on
# (`tools/panel_algorithms.py`; float64 over dim 0, one thread, hot / cold, recompute /
# the faster of reload and two_pass: 256x4096 1.16 / 0.95, 512x4096 1.10 / 1.00 (the
# panel 128 KiB), 1024x4096 0.85 / 0.84, 2048x2048 0.87 / 0.87, 32768x256 1.07 / 1.02
# where auto took 1.21 / 1.07; float32 8192x1024 0.79, 16384x1024 0.87 / 0.86,
# 8192x4096 0.78 / 0.85, 131072x128 0.86 / 0.93; two threads alike).
@functools.cache
def _panel_geometry(itemsize: int, isa: str) -> tuple[int, int]:
    """(bytes of one step of a full panel, the longest axis a softmax panel keeps in its
    scratch panel) from the kernels' own tables."""
    lanes = _core.panel_lanes(_dispatch.ISA_CODES[isa], itemsize)
    return lanes * itemsize, _core.panel_scratch_steps(itemsize)


def _panel_algorithm(op: str, n: int, inner: int, itemsize: int, isa: str | None) -> str | None:
    """auto's choice over a non-last axis (see above), or None for the rows' rule."""
    if op == "log_softmax" or itemsize == 2:
        return "three_pass_reload"
    step, scratch = _panel_geometry(itemsize, isa or _dispatch.ISA)
    l2 = _dispatch.cache_sizes()["L2"]
    if inner * itemsize > step and n > scratch:
        return "three_pass_reload" if n * step <= l2 // 16 else "three_pass_recompute"
    return "three_pass_reload" if n * min(inner * itemsize, step) <= l2 else None


def auto_algorithm(
    op: str, dtype: Any, n: int, size: int, threads: int = 1, isa: str | None = None, inner: int = 1
) -> str:
    """The algorithm algorithm="auto" takes for `size` elements in rows of `n` on
    `threads` threads and `isa` (None: the selected one), or over an axis of n with
    `inner` elements after it (panels); see above. `dtype`: a NumPy dtype, or a torch one
    (twopass.torch). Runs on every call of the fast path: keep it cheap."""
    itemsize = dtype.itemsize
    if inner > 1 and (panel := _panel_algorithm(op, n, inner, itemsize, isa)):
        return panel
    if itemsize == 2:
        # float16/bfloat16, computed in float32 and bound by that arithmetic: softmax's
        # reload keeps exp(x - max) in a float32 row (rows_reload: its stack scratch row,
        # beyond it a row per thread up to _RELOAD_WIDE_ROW elements), so it computes exp
        # once, as float32's reload does, and float32's rule applies (the halves move half
        # its bytes). Zen 1 VM, one thread, rows of 8192-2^20, ns per element, reload
        # before (exp recomputed in pass 3) / after / two_pass: bfloat16 3.14-3.19 /
        # 1.73-2.00 / 2.81-2.85, float16 2.69-2.78 / 1.61-1.95 / 2.46-2.49, hot and cold
        # alike. A row split along its axis over threads runs the general reload, which
        # recomputes exp: two_pass there, and beyond the wide row. (Before the wide row,
        # Zen 5 VM: rows of 2048-4096 in the scratch row 0.68-1.02 of two_pass's time,
        # rows of 8192 and 128256 recomputing 1.03-1.20.) log_softmax computes exp once
        # either way: the reload only in short rows, for its blocks of rows per call
        # (4096x4096: 1.01-1.14).
        # bfloat16 keeps that wide row in the order of its paired loads and stores (no
        # narrowing shuffle), which makes its reload the faster algorithm at every size
        # and thread count the wide row takes, memory-bound batches included (Zen 4 VM,
        # AVX-512, `bench --tune --dtypes bfloat16`, two_pass / reload, hot / cold: 1
        # thread rows of 256K-1M 1.19-1.45 / 1.19-1.33, 32x128256 1.32 / 1.07, 64x131072
        # 1.15 / 1.16, 256x32000 1.03 / 1.07; 2 threads 8x32000 1.16 / 1.06, 64x32000
        # 1.36 / 1.09, 32x128256 1.24-1.40 / 0.97-1.08, 8x262144 1.22 / 1.04); float16's
        # ordered conversions leave it level with two_pass, where float32's rule stands.
        if op == "softmax":
            if n * 4 <= _RELOAD_SCRATCH_BYTES:
                return "three_pass_reload"
            if n <= _RELOAD_WIDE_ROW and not _split_row(n, size, threads):
                if is_bfloat16(dtype):
                    return "three_pass_reload"
                algorithm = auto_algorithm(op, _FLOAT32, n, size, threads, isa)
                if algorithm == "three_pass_reload" and _f16_streams(n, size, isa):
                    return "two_pass"
                return algorithm
        return "three_pass_reload" if n * 4 < SHORT_ROW_BYTES else "two_pass"
    if op == "log_softmax":
        return "three_pass_reload" if n * itemsize < SHORT_ROW_BYTES else "two_pass"
    w, cache, cache_several, stream_row, split_row, _ = _limits.get((itemsize, isa)) or _reload_limits(itemsize, isa)
    row = 2 * n * itemsize  # x and y of one row
    # The driver runs several threads (csrc/softmax.cpp, run_typed): on rows, or on a row
    # split along its axis; a shorter single row runs on one.
    several = threads > 1 and size >= 2 * _MIN_PER_THREAD and (size >= 2 * n or n >= 2 * _MIN_PER_CHUNK)
    if _split_row(n, size, threads):  # ... on one row, split along its axis
        # (the exp outweighs what all the threads' memory traffic saves: w >= 4 per thread)
        return "three_pass_reload" if row <= split_row or w >= 4 * threads else "two_pass"
    if 2 * size * itemsize <= (cache_several if several else cache):
        return "three_pass_reload"
    if w == 1 and n * itemsize < SHORT_ROW_BYTES:  # the reload's row blocks save per-row costs
        return "three_pass_reload"
    if several:
        if w == 1 and row > stream_row:  # (stream_row is 0 for w = 1 but on a mesh L3)
            return "two_pass"
    elif w >= 4:
        return "three_pass_reload"
    return "three_pass_reload" if row <= stream_row else "two_pass"


def _small_half_reload_bytes() -> int:
    """The x and y of a float16/bfloat16 softmax, counted in float32 bytes, up to which
    auto_algorithm gives it the reload on any thread count: what the small calls in one
    C++ call (csrc/small_calls.h) take without asking Python. Their rows are too short to
    be split along their axis, so float32's cache rule decides, on its smaller cache."""
    assert _SMALL_SOFTMAX_BYTES // 2 < 2 * _MIN_PER_CHUNK  # (no row of a small call is split)
    _, cache, several, _, _, _ = _reload_limits(4, None)
    return min(cache, several)


SMALL_HALF_RELOAD_BYTES = _small_half_reload_bytes()
_core.numpy_init(
    np.ndarray,
    (_FLOAT32, np.dtype(np.float64), np.dtype(np.float16)),
    np.dtype(np.uint16),
    np.empty_like,  # (what _alloc.empty gives below its huge-page threshold)
    np.empty,
    _dispatch,
    _dispatch.isa_code(None),
    _SMALL_SOFTMAX_BYTES,
    SHORT_ROW_BYTES,
    SMALL_HALF_RELOAD_BYTES,
)
