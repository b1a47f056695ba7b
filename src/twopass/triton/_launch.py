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
    else:
        kernel[(grid,)](*args, **meta, num_warps=num_warps)


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
