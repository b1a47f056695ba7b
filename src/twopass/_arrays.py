"""What every NumPy entry shares: argument checks, dtypes, `out=`, memory layouts and
frameworks (NumPy natively; DLPack producers such as CPU torch tensors, zero-copy).

The C++ core sees a problem as (outer, n, inner) with unit stride across `inner`: a
softmax over a non-last axis runs in place in memory, vectorised across `inner`.
Layouts that cannot be described so (e.g. a transposed batch of rows, or rows with a
non-unit stride along the axis) are copied to C order first. float16 and bfloat16 go
to the kernels as they are (uint16 views: they convert in registers and compute in
float32); only the cross-entropy's float16 path converts blocks of rows with
`to_float32` / `from_float32`. Everything else is zero-copy.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Protocol, TypeVar

import numpy as np

from . import _core, _dispatch


class SupportsDLPack(Protocol):
    """An array that exports its memory through DLPack: a NumPy array, a CPU torch.Tensor, ..."""

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...


ArrayT = TypeVar("ArrayT", bound=SupportsDLPack)  # results are of the input's kind

# The algorithms of the softmax family, by name; their codes are _dispatch.ALGO_CODES.
ALGORITHMS = ("two_pass", "three_pass_reload", "three_pass_recompute", "online")
NATIVE = (np.dtype(np.float32), np.dtype(np.float64))  # computed as such; halves in float32 registers


def check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype not in NATIVE and not is_half(dtype):
        raise TypeError(f"{name}: unsupported dtype {dtype}; expected float32, float64, float16 or bfloat16")


def native_order(a: np.ndarray) -> np.ndarray:
    """a, or a copy in the machine's byte order when its floats are byte-swapped ('>f4' on
    x86): the kernels read memory as native floats."""
    return a.astype(a.dtype.newbyteorder("=")) if a.dtype.kind == "f" and not a.dtype.isnative else a


_NAMES: dict[Any, str] = {}


def dtype_name(dtype: Any) -> str:
    """dtype.name (a NumPy dtype) or str(dtype) ("torch.bfloat16"), kept per dtype: NumPy
    builds the name in Python on every access (NumPy 2.4, Xeon VM: 0.9-3.5 us, str() more,
    against ~70 ns for this lookup), on every call that asks."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = dtype.name if isinstance(dtype, np.dtype) else str(dtype)
    return name


def is_bfloat16(dtype: Any) -> bool:
    """Whether `dtype` is a bfloat16: NumPy's (ml_dtypes) or torch's."""
    return dtype_name(dtype).endswith("bfloat16")


def is_half(dtype: np.dtype) -> bool:
    return dtype == np.float16 or dtype_name(dtype) == "bfloat16"


def normalize_axis(axis: Any, ndim: int, name: str) -> int:
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name}: axis must be an integer, got {type(axis).__name__}") from None
    if not -ndim <= ax < ndim:
        raise np.exceptions.AxisError(ax, ndim, msg_prefix=name)
    return ax % ndim


def check_algorithm(algorithm: Any, name: str) -> str:
    if algorithm != "auto" and algorithm not in ALGORITHMS:
        raise ValueError(
            f"{name}: unknown algorithm {algorithm!r}; choose one of 'auto', " + ", ".join(map(repr, ALGORITHMS))
        )
    return algorithm


def check_threads(threads: Any, name: str) -> int:
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


def check_out(
    out: Any, x: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, name: str, in_place_ok: bool
) -> np.ndarray:
    o, _ = to_numpy(out, name, writable=True)
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


def layout(a: np.ndarray, ax: int) -> tuple[int, int, int, int, int] | None:
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


def out_layout(y: np.ndarray, ax: int, op: str, keepdims: bool) -> tuple[int, int] | None:
    """(outer stride, axis stride) of the output, or None when it needs a temporary."""
    if op == "logsumexp":  # y is (outer, inner): view it with a length-1 axis at `ax`
        lay = layout(y if keepdims else np.expand_dims(y, ax), ax)
        return None if lay is None else (lay[3], 0)
    lay = layout(y, ax)
    if lay is None or (lay[2] == 1 and lay[4] != 1 and lay[1] > 1):
        return None
    return lay[3], lay[4]


# ----------------------------------------------------------------------------------
# Frameworks: NumPy natively; DLPack producers (torch CPU tensors, ...) zero-copy.
# ----------------------------------------------------------------------------------
def to_numpy(x: Any, name: str, writable: bool = False) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
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
            if dtype_name(a.dtype) == "bfloat16":
                return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
            return torch.from_numpy(a)

        return arr, wrap
    try:
        return t.numpy(), torch.from_numpy
    except (TypeError, RuntimeError) as e:
        raise TypeError(f"{name}: unsupported dtype {t.dtype}") from e


# ----------------------------------------------------------------------------------
# Half precision: read and written as such, computed in float32.
# ----------------------------------------------------------------------------------
def to_float32(a: np.ndarray) -> np.ndarray:
    """float16/bfloat16 to float32 (exact). bfloat16 is the upper half of a float32: a
    shift (ml_dtypes' astype converts element by element, ~10x slower)."""
    if a.dtype == np.float16:
        return a.astype(np.float32)
    return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def from_float32(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 to float16/bfloat16, rounding to nearest even (NaN stays NaN)."""
    if dtype == np.float16:
        return a.astype(np.float16)
    u = np.ascontiguousarray(a).view(np.uint32)  # (1-d if `a` is 0-d: reshaped back below)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    r[np.isnan(a).reshape(r.shape)] = 0x7FC0
    return r.view(dtype).reshape(a.shape)


# Rows shorter than this take normal stores: a row written with streaming stores ends with
# a fence (and starts with a peeled head), which short rows pay per row. Xeon VM (504 MiB
# mesh L3), float32 into out=, y 16 MiB, 1 thread, streaming / normal: rows of 256 floats
# 1.79 cold and 2.91 hot, 512: 1.25-1.67 cold, 1024: 0.99-1.00 cold but 1.05-1.25 hot;
# rows of 4096 and single rows gained (tools/streaming_stores.py). float16 and bfloat16
# count at float32's size, here and against the size threshold: their arithmetic per
# element is float32's, and their x and y together pass the cache when float32's y does
# (Xeon VM, 260 MiB mesh L3, 4096x4096 softmax into out= (y 32 MiB, rows of 8 KiB),
# streaming / normal stores, ms: 1 thread cold float16 9.6-10.5 / 13.0-13.2, bfloat16
# 9.6-10.2 / 10.2-11.5, hot 8.1-10.6 / 10.4-12.2 and 7.5-7.6 / 9.2-10.6; 2 threads cold
# 5.5-5.8 / 6.1-6.3 and 5.0 / 5.9-6.1, hot 4.5-5.9 either way).
STREAM_MIN_ROW_BYTES = 16 << 10


def streaming_stores(y: np.ndarray, x: np.ndarray, fresh: bool = False) -> bool:
    """Whether the kernels should write `y` with streaming (non-temporal) stores: when it
    is larger than the cache a core can count on (_dispatch.stream_min_bytes) in rows of
    at least STREAM_MIN_ROW_BYTES (halves counted at float32's size), and only into
    memory that was there before the call. Not in place (the lines were just read: there
    is no read-for-ownership to save), and not into a `fresh` output: its first touch
    faults each page in and zeroes it, which brings its lines into the cache, and
    streaming stores then only evict them (Xeon VM, plain calls into fresh 2 MiB pages,
    float32, streaming / normal stores: 4096x4096 softmax 1.22, log_softmax 1.31; one row
    of 2^24 1.18 and 1.16). An `out=` whose pages are not resident yet (_core.untouched:
    a fresh np.empty) counts as fresh."""
    width = max(y.itemsize, 4)  # (float16 and bfloat16 at float32's size: see above)
    return (
        not fresh
        and y.size * width > _dispatch.stream_min_bytes()
        and (y.ndim == 0 or y.shape[-1] * width >= STREAM_MIN_ROW_BYTES)
        and not np.may_share_memory(y, x)
        # an `out=` never written since it was mapped (a fresh np.empty) is fresh too:
        # 4096x4096 float32 softmax into one, Zen 4, 1 thread: see the README
        and not _core.untouched(y.ctypes.data, y.nbytes)
    )
