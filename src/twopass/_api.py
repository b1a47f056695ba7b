"""The public functions: argument checks, layout, dtypes, frameworks; then one C++ call.

The C++ core sees a problem as (outer, n, inner) with unit stride across `inner`: a
softmax over a non-last axis runs in place in memory, vectorised across `inner`.
Layouts that cannot be described so (e.g. a transposed batch of rows, or rows with a
non-unit stride along the axis) are copied to C order first; float16 and bfloat16 are
converted to float32 and back. Everything else is zero-copy.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np

from . import _core, _dispatch

ALGORITHMS = ("two_pass", "three_pass_reload", "three_pass_recompute", "online")
_ALGO_CODES = {name: code for code, name in enumerate(ALGORITHMS)}  # csrc/driver.h, Algo
_OP_CODES = {"softmax": 0, "log_softmax": 1, "logsumexp": 2}  # csrc/driver.h, Op
_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def softmax(x: Any, axis: int = -1, *, out: Any = None, algorithm: str = "auto", threads: int | None = None) -> Any:
    """Softmax along `axis`: exp(x) / sum(exp(x)), computed without overflow.

    x: float32, float64, float16 or bfloat16 array (NumPy, or anything with DLPack such
       as a CPU torch tensor; the result is of the same framework).
    axis: the axis to normalise (negative counts from the end).
    out: optional array of the result's shape and dtype (may be `x` itself).
    algorithm: "auto", "two_pass", "three_pass_reload", "three_pass_recompute", "online".
    threads: threads to use (default: TWOPASS_NUM_THREADS, else the usable cores).

    Rows holding NaN or +inf, and rows of only -inf, give NaN (as torch.softmax).
    """
    return compute("softmax", x, axis=axis, out=out, algorithm=algorithm, threads=threads)


def log_softmax(x: Any, axis: int = -1, *, out: Any = None, algorithm: str = "auto", threads: int | None = None) -> Any:
    """Log-softmax along `axis`: x - logsumexp(x). Arguments as for `softmax`.

    The last pass computes no exponential: y = (x - max) - log(s), where
    s = sum(exp(x - max)) >= 1, so y <= 0 everywhere and y = 0 exactly at a maximum
    that dominates its row.
    """
    return compute("log_softmax", x, axis=axis, out=out, algorithm=algorithm, threads=threads)


def logsumexp(x: Any, axis: int = -1, *, keepdims: bool = False, out: Any = None, threads: int | None = None) -> Any:
    """log(sum(exp(x))) along `axis`, in one pass over memory (the two-pass algorithm's
    first pass), as max + log(sum(exp(x - max))): never below the maximum, and equal to
    it when the maximum dominates. An empty axis gives -inf; NaN gives NaN; +inf gives +inf."""
    return compute("logsumexp", x, axis=axis, out=out, keepdims=keepdims, threads=threads)


# ----------------------------------------------------------------------------------
# The shared path.
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
        and x.dtype in _NATIVE
        and x.flags.c_contiguous
        and type(algorithm) is str
        and (algorithm == "auto" or algorithm in _ALGO_CODES)
        and (threads is None or (type(threads) is int and threads >= 1))
        and (out is None or (op != "logsumexp" and _fast_out_ok(x, out)))
    ):
        return _fast(op, x, keepdims, out, algorithm, threads)  # the common calls, without the general checks below
    name = f"twopass.{op}"
    if op not in _OP_CODES:
        raise ValueError(f"unknown op {op!r}")
    arr, wrap = _to_numpy(x, name)
    dtype = arr.dtype
    if dtype not in _NATIVE and not _is_half(dtype):
        raise TypeError(f"{name}: unsupported dtype {dtype}; expected float32, float64, float16 or bfloat16")
    scalar_input = arr.ndim == 0
    arr0 = arr
    if scalar_input:  # a 0-d array is a row of one; results and out keep shape ()
        arr = arr.reshape(1)
    ax = _normalize_axis(axis, arr.ndim, name)
    algo = _check_algorithm(algorithm, name)
    nthreads = _check_threads(threads, name)
    isa_code = _dispatch.isa_code(isa)

    if op == "logsumexp":
        shape = arr.shape[:ax] + ((1,) if keepdims else ()) + arr.shape[ax + 1 :]
    else:
        shape = arr.shape
    out_arr = None
    if out is not None:
        user_shape = () if scalar_input else shape
        out_arr = _check_out(out, arr0, user_shape, dtype, name, in_place_ok=op != "logsumexp")
        out_arr = out_arr.reshape(shape)

    if arr.size == 0:  # nothing to read: empty results, or -inf (the empty sum's log)
        y = np.full(shape, -np.inf if op == "logsumexp" else 0, dtype=dtype)
        if out_arr is not None:
            np.copyto(out_arr, y)
            return out
        return wrap(y.reshape(()) if scalar_input and op != "logsumexp" else y)

    # Compute dtype: float16/bfloat16 are read and written as such, computed in float32.
    xc = arr if dtype in _NATIVE else arr.astype(np.float32)
    layout = _layout(xc, ax)
    if layout is None or (layout[2] == 1 and layout[4] != 1):  # see module docstring
        xc = np.ascontiguousarray(xc)
        layout = _layout(xc, ax)
    outer, n, inner, xs_outer, xs_n = layout

    # The output: straight into `out` when its layout allows, else via a temporary.
    direct = out_arr is not None and out_arr.dtype == xc.dtype
    y = out_arr if direct else np.empty(shape, dtype=xc.dtype)
    y3 = _out_layout(y, ax, op, keepdims)
    if y3 is None:
        y = np.empty(shape, dtype=xc.dtype)
        y3 = _out_layout(y, ax, op, keepdims)
        direct = False
    ys_outer, ys_n = y3
    if op == "logsumexp":
        code = _ALGO_CODES["two_pass"] if algo == "auto" else _ALGO_CODES[algo]
    else:
        code = _ALGO_CODES[_auto_algorithm(op, xc.dtype, n, xc.size, nthreads, isa) if algo == "auto" else algo]
    if stream is None:
        # Streaming stores pay off once the output cannot stay in cache, and only when
        # it is not x itself (in place, the lines are read anyway: no read-for-ownership
        # to save).
        stream = y.nbytes > _dispatch.cache_sizes()["L3"] and not np.may_share_memory(y, xc)
    _core.run(
        _OP_CODES[op], code, isa_code, xc, y, outer, n, inner, xs_outer, xs_n, ys_outer, ys_n, nthreads, bool(stream)
    )

    if out_arr is not None:
        if not direct:
            np.copyto(out_arr, y, casting="unsafe")
        result = out_arr
    else:
        result = y if y.dtype == dtype else y.astype(dtype)
    if scalar_input and op != "logsumexp":
        result = result.reshape(())
    return wrap(result) if out is None else out


def _fast(
    op: str, x: np.ndarray, keepdims: bool, out: np.ndarray | None, algorithm: str, threads: int | None
) -> np.ndarray:
    """compute() for a non-empty C-contiguous float32/float64 NumPy array over its last
    axis, `out` None or a fitting C-contiguous array (_fast_out_ok), `threads` None or
    a positive int: the same C++ call as the general path, with ~1.5 us of Python
    instead of ~5 (what decides rows of a few thousand elements)."""
    n = x.shape[-1]
    outer = x.size // n
    nthreads = _dispatch.default_threads() if threads is None else threads
    if op == "logsumexp":
        y = np.empty(x.shape[:-1] + ((1,) if keepdims else ()), dtype=x.dtype)
        code, ys_outer = (0 if algorithm == "auto" else _ALGO_CODES[algorithm]), 1
    else:
        y = np.empty_like(x) if out is None else out
        if algorithm != "auto":
            code = _ALGO_CODES[algorithm]
        elif op == "log_softmax":  # _auto_algorithm's rule for it, without the cost of a call
            code = _RELOAD_CODE if n * x.itemsize < SHORT_ROW_BYTES else _TWO_PASS_CODE
        elif x.nbytes <= _SMALL_SOFTMAX_BYTES:
            code = _RELOAD_CODE  # what _auto_algorithm says for a softmax in cache, without its cost
        else:
            code = _ALGO_CODES[_auto_algorithm(op, x.dtype, n, x.size, nthreads)]
        ys_outer = n
    stream = y.nbytes > _dispatch.cache_sizes()["L3"] and y is not x  # as in compute()
    _core.run(
        _OP_CODES[op],
        code,
        _dispatch.isa_code(None),
        x,
        y,
        outer,
        n,
        1,
        n,
        1,
        ys_outer,
        1 if op != "logsumexp" else 0,
        nthreads,
        stream,
    )
    return y


def _fast_out_ok(x: np.ndarray, out: Any) -> bool:
    """`out` is x itself, or a writable C-contiguous array of x's shape and dtype that
    does not overlap x: what the general path would accept and write directly."""
    return (
        type(out) is np.ndarray
        and out.shape == x.shape
        and out.dtype == x.dtype
        and out.flags.c_contiguous
        and out.flags.writeable
        and (out is x or not np.may_share_memory(out, x))
    )


def _is_half(dtype: np.dtype) -> bool:
    return dtype == np.float16 or dtype.name == "bfloat16"


def _normalize_axis(axis: Any, ndim: int, name: str) -> int:
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name}: axis must be an integer, got {type(axis).__name__}") from None
    if not -ndim <= ax < ndim:
        raise np.exceptions.AxisError(ax, ndim, msg_prefix=name)
    return ax % ndim


def _check_algorithm(algorithm: Any, name: str) -> str:
    if algorithm != "auto" and algorithm not in ALGORITHMS:
        raise ValueError(
            f"{name}: unknown algorithm {algorithm!r}; choose one of 'auto', " + ", ".join(map(repr, ALGORITHMS))
        )
    return algorithm


def _check_threads(threads: Any, name: str) -> int:
    if threads is None:
        return _dispatch.default_threads()
    if isinstance(threads, bool):
        raise TypeError(f"{name}: threads must be an integer, got bool")
    try:
        t = operator.index(threads)
    except TypeError:
        raise TypeError(f"{name}: threads must be an integer, got {type(threads).__name__}") from None
    if t < 1:
        raise ValueError(f"{name}: threads must be >= 1, got {t}")
    return t


def _check_out(
    out: Any, x: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, name: str, in_place_ok: bool
) -> np.ndarray:
    o, _ = _to_numpy(out, name, writable=True)
    if o.shape != shape:
        raise ValueError(f"{name}: out has shape {o.shape}, expected {shape}")
    if o.dtype != dtype:
        raise ValueError(f"{name}: out has dtype {o.dtype}, expected {dtype}")
    if not o.flags.writeable:
        raise ValueError(f"{name}: out is read-only")
    if np.may_share_memory(o, x):
        same = (
            in_place_ok
            and o.__array_interface__["data"][0] == x.__array_interface__["data"][0]
            and o.strides == x.strides
        )
        if not same:
            raise ValueError(f"{name}: out overlaps x without being x itself (only exact in-place is allowed)")
    return o


def _layout(a: np.ndarray, ax: int) -> tuple[int, int, int, int, int] | None:
    """(outer, n, inner, outer stride, axis stride) in elements, or None when the dims
    before `axis` do not merge into one stride or those after it are not C-contiguous."""
    shape = a.shape
    if a.flags.c_contiguous:  # the common case, without looking at strides
        inner = math.prod(shape[ax + 1 :])
        return math.prod(shape[:ax]), shape[ax], inner, shape[ax] * inner, inner
    item = a.itemsize
    if any(s % item for s in a.strides):
        return None
    st = [s // item for s in a.strides]
    inner = math.prod(shape[ax + 1 :])
    expect = 1
    for k in range(a.ndim - 1, ax, -1):  # dims after the axis: C-contiguous block
        if shape[k] != 1 and st[k] != expect:
            return None
        expect *= shape[k]
    outer, xs_outer = 1, 0
    for k in range(ax - 1, -1, -1):  # dims before the axis: one stride
        if shape[k] == 1:
            continue
        if outer == 1:
            xs_outer = st[k]
        elif st[k] != xs_outer * outer:
            return None
        outer *= shape[k]
    return outer, shape[ax], inner, xs_outer, st[ax]


def _out_layout(y: np.ndarray, ax: int, op: str, keepdims: bool) -> tuple[int, int] | None:
    """(outer stride, axis stride) of the output, or None when it needs a temporary."""
    if op == "logsumexp":  # y is (outer, inner): view it with a length-1 axis at `ax`
        lay = _layout(y if keepdims else np.expand_dims(y, ax), ax)
        return None if lay is None else (lay[3], 0)
    lay = _layout(y, ax)
    if lay is None or (lay[2] == 1 and lay[4] != 1 and lay[1] > 1):
        return None
    return lay[3], lay[4]


# ----------------------------------------------------------------------------------
# Frameworks: NumPy natively; DLPack producers (torch CPU tensors, ...) zero-copy.
# ----------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str, writable: bool = False) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    if isinstance(x, np.ndarray):
        return x, _identity
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        return _torch_to_numpy(x, name)
    if hasattr(x, "__dlpack__") and not hasattr(x, "__array_interface__"):
        try:
            a = np.from_dlpack(x)
        except (TypeError, BufferError, RuntimeError) as e:
            raise TypeError(f"{name}: cannot read {type(x).__name__} through DLPack: {e}") from None
        return a, _framework_wrapper(mod)
    try:
        return np.asarray(x), _identity
    except Exception as e:  # noqa: BLE001 - report what we were given
        raise TypeError(f"{name}: expected an array, got {type(x).__name__} ({e})") from None


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _framework_wrapper(mod: str) -> Callable[[np.ndarray], Any]:
    import importlib

    try:
        from_dlpack = importlib.import_module(mod).from_dlpack
    except (ImportError, AttributeError):
        return _identity
    return from_dlpack


def _torch_to_numpy(t: Any, name: str) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    import torch

    if t.device.type != "cpu":
        raise TypeError(f"{name}: tensor on {t.device}; twopass's NumPy API takes CPU tensors")
    t = t.detach()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        arr = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)

        def wrap(a: np.ndarray) -> Any:
            if a.dtype.name == "bfloat16":
                return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
            return torch.from_numpy(a)

        return arr, wrap
    try:
        return t.numpy(), torch.from_numpy
    except (TypeError, RuntimeError) as e:
        raise TypeError(f"{name}: unsupported dtype {t.dtype}") from e


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
# longer polynomial; AVX2 half the lanes and no vscalef). Sizes below count elements at
# float32's 8 bytes of x and y (float64 is measured per element, not per byte). Then
# (`python -m twopass bench --tune`, hot and cold, 1 and 2 threads, AVX-512 and AVX2;
# README, "algorithm"):
# - the reload while the call's x and y fit the cache a core can count on,
#   min(w/2 x L3, 16 w x L2). A server's L3 is shared by dozens of cores and tenants,
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
# - a row that several threads split along its axis: each pass is a parallel region of
#   its own, so two_pass, unless w >= 4 and x and y fit half the cache above (float64
#   on AVX2, 512K..2M: the reload 1.1..1.3x faster hot).
EXP_WEIGHT = {(4, "avx512"): 1, (8, "avx512"): 2, (4, "simd"): 2, (8, "simd"): 4, (4, "scalar"): 8, (8, "scalar"): 8}
_SMALL_SOFTMAX_BYTES = 1 << 16  # x of a softmax below this: x and y fit any cache counted on (>= 128 KiB)
_RELOAD_CODE, _TWO_PASS_CODE = ALGORITHMS.index("three_pass_reload"), ALGORITHMS.index("two_pass")
SHORT_ROW_BYTES = 2048  # rows shorter than this take the reload's row blocks (log_softmax; softmax, w = 1)
_MIN_PER_THREAD = 1 << 15  # csrc/driver.h, kMinPerThread: elements per thread of a batch
_MIN_PER_CHUNK = 1 << 18  # csrc/driver.h, kMinPerChunk: elements per chunk of a split row
_limits: dict[tuple[int, str | None], tuple[int, int, int, int]] = {}  # (itemsize, isa): see _reload_limits


def _reload_limits(itemsize: int, isa: str | None) -> tuple[int, int, int, int]:
    """(w, cache, streamed row, split row): the exp's weight, and the x + y bytes up to
    which softmax takes the reload."""
    name = isa or _dispatch.ISA
    w = EXP_WEIGHT[itemsize, name if name in ("avx512", "scalar") else "simd"]
    caches = _dispatch.cache_sizes()
    per_byte = itemsize // 4  # elements at float32's size
    cache = int(min(w / 2 * caches["L3"], 16 * w * caches["L2"])) * per_byte
    limits = _limits[itemsize, isa] = (w, cache, w * w * caches["L2"] * per_byte, cache // 2 if w >= 4 else 0)
    return limits


def _auto_algorithm(op: str, dtype: np.dtype, n: int, size: int, threads: int = 1, isa: str | None = None) -> str:
    """The algorithm algorithm="auto" takes for `size` elements in rows of `n` on
    `threads` threads and `isa` (None: the selected one); see above. Runs on every call
    of the fast path: keep it cheap."""
    itemsize = dtype.itemsize
    if op == "log_softmax":
        return "three_pass_reload" if n * itemsize < SHORT_ROW_BYTES else "two_pass"
    w, cache, stream_row, split_row = _limits.get((itemsize, isa)) or _reload_limits(itemsize, isa)
    row = 2 * n * itemsize  # x and y of one row
    several = threads > 1 and size >= 2 * _MIN_PER_THREAD  # the driver runs several threads
    if several and n >= 2 * _MIN_PER_CHUNK and size // n < threads:  # ... on one row, split along its axis
        return "three_pass_reload" if row <= split_row else "two_pass"
    if 2 * size * itemsize <= cache:
        return "three_pass_reload"
    if several:
        if w == 1 and n * itemsize >= SHORT_ROW_BYTES:
            return "two_pass"
    elif w >= 4:
        return "three_pass_reload"
    return "three_pass_reload" if row <= stream_row else "two_pass"
