"""What every Triton operation of twopass shares on the host side: the launch (with the
launch hook and the trace the tests and tools use), the `cfg=` override merging, the device
capabilities, the tensor and dim checks, the (outer, n, inner) layout of a tensor, and small
planning helpers. The kernels' shared @triton.jit helpers are in `_common.py`.

Every launcher sees its tensor as (outer, n, inner): `n` is the reduced axis, `outer` the
dimensions before it and `inner` those after, each group merged into one index with one
stride (`_layout`). `_prepare` copies to C order the inputs whose groups do not merge, that
are not dense (a slice with gaps, an expanded tensor) or that have no unit-stride axis among
(outer, n, inner); everything else runs in place in memory.

Hooks for tests and tools (module globals, read at each call):

- `_TRACE`: set it to a list to record (kernel name, launch parameters) for each launch
  that a launcher plans (e.g. "row_fused", "lse_bwd_col", "ce_split").
- `_LAUNCH_HOOK`: set it to hook(kernel, grid, args, constexprs, num_warps) to hand every
  launch to it instead of running it (`python -m twopass bench --device cuda --compile`
  compiles each one for sm_90 offline); with a hook set the launchers accept tensors on any
  device (e.g. "meta").
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tests set this to a list to see which kernel each call ran, with its parameters.
_TRACE: list[tuple[str, dict[str, Any]]] | None = None

# The benchmark's --compile sets this to compile (offline, for sm_90) what each call would
# launch, instead of launching it: hook(kernel, grid, args, constexprs, num_warps).
_LAUNCH_HOOK = None


def _trace(kernel: str, **params: Any) -> None:
    if _TRACE is not None:
        _TRACE.append((kernel, params))


def _launch_kernel(kernel, grid: int, args: tuple, meta: dict[str, Any], num_warps: int) -> None:
    """Launch kernel on a 1-D grid, or hand the launch to _LAUNCH_HOOK when one is set."""
    if _LAUNCH_HOOK is not None:
        _LAUNCH_HOOK(kernel, grid, args, meta, num_warps)
        return
    dev = args[0].device
    # Launch on the tensors' device (and its current stream); switching the current device
    # costs microseconds per call, so only when it differs.
    if dev.type == "cuda" and dev.index != torch.cuda.current_device():
        with torch.cuda.device(dev):
            kernel[(grid,)](*args, **meta, num_warps=num_warps)
    elif dev.type != "cuda" or not _FAST_LAUNCH or not _fast_launch(kernel, grid, args, meta, num_warps, dev.index):
        kernel[(grid,)](*args, **meta, num_warps=num_warps)


# The fast launch: Triton's `kernel[grid](...)` (JITFunction.run) binds and specializes
# every argument, builds a cache key with str() of the options, checks the kernel's globals
# and reads the device and stream, all in Python, on every launch (~20-30 us of host time a
# launch on the H200's host, 2026-12-04, against torch's 7-15 us for a whole softmax). A
# launcher makes the same launches over and over, so the first launch of each
# (kernel, constexprs, warps, device, argument specialization) goes through Triton and
# keeps the compiled kernel it returns; later ones call that kernel's launcher directly
# with the current stream and the arguments in the kernel's order, as JITFunction.run
# does. The argument key is at least as fine as Triton's specialization (pointers: dtype
# and 16-byte alignment; integers: = 1, divisible by 16, 32- or 64-bit range), so a launch never
# reuses a kernel compiled for other arguments. Not under launch hooks (profilers) or
# pre-run hooks; anything unexpected turns it off for the process and leaves Triton's
# path. OFF unless TWOPASS_TRITON_FAST_LAUNCH=1: written without a GPU (its host logic is
# tested with a stand-in kernel, tests/test_triton_launch.py); on by default once a GPU
# run has passed `python -m twopass verify --device cuda` with it and measured its host
# time (tools/gpu_overhead.py).
_FAST_LAUNCH = os.environ.get("TWOPASS_TRITON_FAST_LAUNCH", "0") == "1"
_COMPILED: dict[tuple, tuple] = {}  # key -> (launcher, function, packed metadata, tail of arguments)
_I32, _I64 = 1 << 31, 1 << 63


def _arg_key(args: tuple) -> tuple | None:
    key = []
    for a in args:
        t = type(a)
        if t is bool or a is None:
            key.append(a)
        elif t is int:
            key.append((a == 1, a % 16 == 0, -_I32 <= a < _I32, a < _I64))
        elif t is float:
            key.append(float)
        elif isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        else:
            return None
    return tuple(key)


def _fast_launch(kernel, grid: int, args: tuple, meta: dict[str, Any], num_warps: int, device: int) -> bool:
    """Launch through the kept compiled kernel, or through Triton's path the first time
    (keeping what it compiled); False where the caller must take Triton's path."""
    global _FAST_LAUNCH, _KNOBS
    arg_key = _arg_key(args)
    if arg_key is None or getattr(kernel, "pre_run_hooks", True):
        return False
    if _KNOBS is None:
        from triton import knobs as _KNOBS
    hooks = _KNOBS.runtime
    if _hooked(hooks.launch_enter_hook) or _hooked(hooks.launch_exit_hook):
        return False
    key = (kernel, num_warps, tuple(meta.items()), device, arg_key)
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = kernel[(grid,)](*args, **meta, num_warps=num_warps)  # Triton's path: its errors are the caller's
        try:
            if hasattr(compiled, "result"):  # (an asynchronous compile's future)
                compiled = compiled.result()
            names = kernel.arg_names[len(args) :]
            defaults = {p.name: p.default for p in kernel.params}
            tail = tuple(meta[n] if n in meta else defaults[n] for n in names)
            if set(meta) - set(names) or any(v is inspect.Parameter.empty for v in tail):
                raise TypeError("arguments that do not bind in order")
            _COMPILED[key] = (compiled.run, compiled.function, compiled.packed_metadata, tail)
        except Exception:  # an API this code does not know: Triton's path from now on
            _FAST_LAUNCH = False
            _COMPILED.clear()
        return True
    run, function, packed, tail = entry
    try:
        run(grid, 1, 1, _stream(device), function, packed, None, None, None, *args, *tail)
    except Exception:  # not launched: Triton's path, now and from now on (it raises what is real)
        _FAST_LAUNCH = False
        _COMPILED.clear()
        return False
    return True


_KNOBS = None  # triton.knobs, imported on the first launch


def _hooked(hook) -> bool:
    """A launch hook is set: not None and, where Triton keeps a chain of them (3.6 on),
    a chain with something in it. Without one the launcher gets None, as it skips then."""
    return hook is not None and bool(getattr(hook, "calls", True))


try:  # the current stream's handle, as Triton's driver reads it
    from torch._C import _cuda_getCurrentRawStream as _stream
except ImportError:  # pragma: no cover

    def _stream(device: int) -> int:
        return torch.cuda.current_stream(device).cuda_stream


def _cdiv(a: int, b: int) -> int:
    # Not triton.cdiv: in Triton 3.6-3.9 that is a ConstexprFunction whose host-side call
    # costs ~3 us (measured), and a launcher plans with up to ten of them.
    return -(-a // b)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _interpreter_numpy_shim() -> None:
    """Triton's interpreter turns a tensor into an index with int(array of shape (1,)), which
    NumPy >= 2.4 refuses, so a loop over a run-time bound fails there (triton-lang/triton
    issue 9171, fixed upstream by squeezing first). Same fix, applied to the interpreter's
    tensor patch only when interpreting and only while Triton lacks it."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover
        return
    orig = getattr(interpreter, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_twopass_shim", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._twopass_shim = True
    interpreter._patch_lang_tensor = patched


if _interpreting():
    _interpreter_numpy_shim()


_CAPS: dict[int, tuple[int, int]] = {}  # device index -> (SMs, L2 bytes), read once


def _device_caps(x: torch.Tensor, cfg: dict[str, Any]) -> tuple[int, int]:
    sms, l2 = cfg["num_sms"], cfg["l2_bytes"]
    if (sms is None or l2 is None) and x.is_cuda:
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        caps = _CAPS.get(index)
        if caps is None:
            props = torch.cuda.get_device_properties(index)
            caps = _CAPS[index] = (props.multi_processor_count, int(getattr(props, "L2_cache_size", 0)))
        sms = sms or caps[0]
        l2 = l2 or caps[1]
    return sms or 132, l2 or 50 * 2**20


def _merged_config(cfg: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    if not cfg:
        return defaults
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    return {**defaults, **cfg}


def _check(x: torch.Tensor, name: str) -> None:
    """A float tensor the kernels can take: on a CUDA device, or anywhere under the
    interpreter or a launch hook."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name}: unsupported dtype {x.dtype}; expected float32, float16 or bfloat16")
    if not (x.is_cuda or _interpreting() or _LAUNCH_HOOK is not None):
        raise ValueError(f"{name}: expected a CUDA tensor (or TRITON_INTERPRET=1), got device {x.device}")


def _norm_dim(dim: int, ndim: int, name: str) -> int:
    nd = max(ndim, 1)
    if not -nd <= dim < nd:
        raise IndexError(f"{name}: dim {dim} out of range for a tensor of {ndim} dimensions")
    return dim % nd


def _merge_dims(shape, stride, dims) -> tuple[int, int] | None:
    """(size, stride) of the dims merged into one index, or None if they do not merge."""
    size, st, prev = 1, 0, None
    for d in dims:
        if shape[d] == 1:
            continue
        if prev is not None and stride[prev] != stride[d] * shape[d]:
            return None
        size *= shape[d]
        st, prev = stride[d], d
    return size, st


def _layout(t: torch.Tensor, dim: int):
    """t as (outer, n, inner) with strides (s_o, s_n, s_i), or None."""
    shape, stride = t.shape, t.stride()
    before = _merge_dims(shape, stride, range(dim))
    after = _merge_dims(shape, stride, range(dim + 1, t.dim()))
    if before is None or after is None:
        return None
    n = shape[dim]
    s_n = stride[dim] if n > 1 else 1
    return before[0], n, after[0], before[1], s_n, after[1]


def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (what torch.empty_like keeps the strides of)."""
    dims = sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def _same_layout(like: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t with the strides of `like` (a copy when they differ)."""
    if t.stride() == like.stride() or t.numel() <= 1:
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def _prepare(x: torch.Tensor, dim: int):
    """x with a usable layout: its dims before and after `dim` merge, and either the
    reduced axis or one of the others has unit stride. Returns (x, layout)."""
    lay = _layout(x, dim)
    if lay is not None:
        outer, n, inner, s_o, s_n, s_i = lay
        ok_row = s_n == 1 or n == 1
        ok_col = (inner > 1 and s_i == 1) or (outer > 1 and s_o == 1)
        if (ok_row or ok_col) and _dense(x):  # outputs (empty_like) then get x's strides
            return x, lay
    # Documented copy: gaps (a sliced view), overlap (expand) or no unit-stride axis.
    x = x.contiguous()
    return x, _layout(x, dim)


def _pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _hints(cfg: dict[str, Any]) -> dict[str, str]:
    # Phase-0 loads ask L2 to keep the lines (phase 1 reads them again); phase-1 loads and
    # stores ask it to drop theirs first, so that the output does not evict pending input.
    if cfg["l2_hints"]:
        return {"KEEP": "evict_last", "DROP": "evict_first"}
    return {"KEEP": "", "DROP": ""}


def _lag(group_bytes: int, n_groups: int, l2: int, cfg: dict[str, Any]) -> int:
    lag = int(l2 * cfg["l2_fraction"]) // max(1, group_bytes)
    return max(1, min(n_groups, lag))


def _reduced_shape(shape, dim: int, keepdim: bool) -> tuple[int, ...]:
    s = list(shape)
    if keepdim:
        s[dim] = 1
    else:
        del s[dim]
    return tuple(s)
