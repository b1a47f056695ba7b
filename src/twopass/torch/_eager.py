"""The eager CPU path of twopass.torch: the C++ kernels called straight on a tensor's
memory, without the custom op's dispatch or a DLPack round trip.

`torch.library` custom ops cost ~10 us a call in eager mode, and the NumPy entry adds
its own checks and conversion: 15x torch's time on a (1, 1024) float32 softmax. Here a
call is `torch.empty_like` plus one C++ call taking data pointers and the layout as
integers (`_core.run_ptr`, `_core.backward_ptr`). The most common small cases are a
single C++ call that reads the tensor itself (csrc/torch_eager.cpp): softmax and
log_softmax over the last dim of at most 64 KiB (`eager_rows`), the backwards of
softmax, log_softmax and logsumexp (`eager_backward`) and the cross-entropy without
class weights (`eager_cross_entropy`); these read the tensor and make the output through
torch's C shim where the process has it (`eager_shim()`; TWOPASS_TORCH_SHIM=0 keeps the
Python C API), at ~1 us a call. The eager path is taken only for plain CPU
float32/float64/float16/bfloat16 tensors outside anything that traces or transforms
(`eager_ok`); everything else (torch.compile, fx/fake/meta tensors, functorch
transforms, dispatch modes, subclasses, other devices and dtypes) takes the custom ops,
whose CPU implementations call the same functions below, so both give identical results.

Where x needs a gradient, softmax_apply / logsumexp_apply make the autograd node: C++
(`_node.py`), which runs the same paths through _core's C table, once it is built and
loaded; the autograd Functions at the end of this file until then.

Threads follow ``torch.get_num_threads()`` (not ``TWOPASS_NUM_THREADS``, which is the
NumPy entry's default): a torch program sets its thread count once, for every op.
The backward of softmax, log_softmax and logsumexp over the last dim, with g and the
saved tensors contiguous, runs twopass's fused row kernels, and that of softmax and
log_softmax over another dim its panel kernels (columns a panel at a time); other layouts
take torch's own backward kernels.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from .. import _alloc, _core, _dispatch
from .._arrays import STREAM_MIN_ROW_BYTES
from .._softmax import _SMALL_SOFTMAX_BYTES, SHORT_ROW_BYTES, SMALL_HALF_RELOAD_BYTES, auto_algorithm
from . import _node

# Every kernel (the softmax family forward and backward, the cross-entropy) also reads
# and writes the halves, computing in float32.
_FWD_BYTES = {torch.float32: 4, torch.float64: 8, torch.float16: 2, torch.bfloat16: 2}
_PLAIN = (Tensor, torch.nn.Parameter)
_STRIDED = torch.strided
_OP = dict(_dispatch.OP_CODES)
_SOFTMAX, _LOG_SOFTMAX, _LSE = _OP["softmax"], _OP["log_softmax"], _OP["logsumexp"]
_RELOAD = _dispatch.ALGO_CODES["three_pass_reload"]
_TWO_PASS = _dispatch.ALGO_CODES["two_pass"]
_ALGO = dict(_dispatch.ALGO_CODES)
_run_ptr = _core.run_ptr
_backward_ptr = _core.backward_ptr
_threads = torch.get_num_threads
_empty_like = torch.empty_like
_is_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_ISA = _dispatch.ISA_CODES[_dispatch.ISA]  # fixed at import (TWOPASS_ISA)
_HUGE = _alloc.HUGE_THRESHOLD if _alloc.ENABLED else math.inf
# _FRESH_STORES: an output in fresh memory is written with normal stores: the page
# faults' zeroing has just brought the lines into cache, so streaming stores save no
# read-for-ownership and only evict them (4096x4096, 1 thread, Zen 5: float32 softmax
# 14.1 -> 12.9 ms, its backward 8.3 -> 7.7 ms; bfloat16 unchanged). Pages _alloc's
# cache gives back (an earlier output's) are not fresh: streaming there (_new_output).
_from_numpy = torch.from_numpy

# The common small case in one C++ call (csrc/torch_eager.cpp): a plain CPU tensor of at
# most _SMALL_SOFTMAX_BYTES, normalised over its last dim, outside anything that
# intercepts calls. It returns False when only autograd stands in the way (a tensor that
# needs grad: the caller applies softmax_apply, the autograd node) and None for anything
# else. It does eager_ok's checks and softmax_forward's work (same kernel and algorithm,
# so the same bits) without the Python attribute reads: a 1x1024 float32 softmax, one
# thread, Zen 1 VM, 10.2 -> 8.5 us (torch 5.6).
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # codes.h's order
# With more than one thread, twopass.torch's kernels run on torch's own OpenMP team
# (csrc/threads.h, TeamScope), not on twopass's worker pool: torch's workers spin after
# each of its ops, and the pool's, started beside them, waited for a core (2 cores, torch
# ops in between: 256x1024 logsumexp 426 -> 205 us, softmax of 8x32000 443 -> 215 us;
# torch's own 330 and 298). TWOPASS_TORCH_OPENMP=0 keeps the pool.
_OPENMP = "OpenMP" in torch.__config__.parallel_info() and os.environ.get("TWOPASS_TORCH_OPENMP", "1") != "0"
OPENMP_RUNTIME: str | None = _core.eager_init(
    Tensor,
    torch.nn.Parameter,
    _DTYPES,
    tuple(torch.empty((), dtype=d) for d in _DTYPES),
    torch.int64,  # cross_entropy's targets (eager_cross_entropy, _cross_entropy.py)
    _STRIDED,
    _empty_like,
    (_functorch_active, _dispatch_modes, _function_modes),
    torch.is_grad_enabled,
    _threads,
    _ISA,
    _SMALL_SOFTMAX_BYTES,
    # the backwards have no algorithm to choose: every size below _new_like's huge pages
    # (saves the Python checks, ~3 us; through autograd at 64x4096, ~210 us a call on the
    # Zen 1 VM, within its noise)
    _HUGE - 1 if _HUGE < math.inf else 2**62,
    SHORT_ROW_BYTES,
    SMALL_HALF_RELOAD_BYTES,
    _OPENMP,
    # the shim's self-test (csrc/torch_eager.cpp, Shim): each dtype, several shapes, a Parameter
    (
        *(torch.zeros((2, 3), dtype=d) for d in _DTYPES),
        torch.zeros(5, dtype=torch.int64),
        torch.zeros((1, 4, 1, 2))[:, 1:3],
        torch.nn.Parameter(torch.zeros(7)),
    ),
    os.environ.get("TWOPASS_TORCH_SHIM", "1") != "0",
)
eager_shim = _core.eager_shim  # whether torch's C shim reads the tensors (TWOPASS_TORCH_SHIM=0: never)
eager_rows = _core.eager_rows
eager_lse = _core.eager_lse  # logsumexp's small calls the same way
eager_backward = _core.eager_backward  # the same for the backwards (softmax_ and logsumexp_backward's)


def _new_like(t: Tensor) -> Tensor:
    """A fresh contiguous tensor of t's shape and dtype. From _alloc.HUGE_THRESHOLD bytes
    up (THP in madvise mode) on 2 MiB pages, as the NumPy entry's outputs (_alloc.py):
    torch's allocator maps 4 KiB pages, whose first-touch faults were 27 of the 32 ms a
    4096x4096 float32 softmax backward took (1 thread, Zen 5 VM); on huge pages, 8 ms.
    The tensor holds its NumPy buffer (torch.from_numpy), which unmaps when it dies."""
    return _new_output(t)[0]


def _new_output(t: Tensor) -> tuple[Tensor, bool]:
    """_new_like(t), and whether the kernels should write it with streaming stores: only
    where _alloc's cache gave back the pages of an output that died (_alloc.reused), in
    rows long enough (_arrays.STREAM_MIN_ROW_BYTES); fresh pages take normal stores
    (_FRESH_STORES)."""
    nbytes = t.numel() * t.element_size()
    if nbytes < _HUGE:  # (a contiguous t's empty_like is contiguous: memory_format costs ~0.15 us)
        y = _empty_like(t) if t.is_contiguous() else _empty_like(t, memory_format=torch.contiguous_format)
        return y, False
    a = _alloc.empty(nbytes, np.uint8)
    stream = _alloc.reused(a) and t.dim() > 0 and t.shape[-1] * t.element_size() >= STREAM_MIN_ROW_BYTES
    return _from_numpy(a).view(t.dtype).view(t.shape), stream


def eager_ok(x: object) -> bool:
    """x is a plain float32/float64/float16/bfloat16 CPU tensor, not a negative view, and
    nothing traces or intercepts the call."""
    return (
        type(x) in _PLAIN
        and x.is_cpu  # type: ignore[attr-defined]
        and x.dtype in _FWD_BYTES  # type: ignore[attr-defined]
        and x.layout is _STRIDED  # type: ignore[attr-defined]
        and not x.is_nested  # type: ignore[attr-defined] # (strided layout, but no sizes)
        and not _is_compiling()
        and not _functorch_active()
        and not _dispatch_modes()
        and not _function_modes()
        and not x.is_neg()  # type: ignore[attr-defined] # (a negative view holds -x: the op resolves it)
    )


def check_strided(name: str, *tensors: object) -> None:
    """TypeError for a sparse, nested or other non-strided tensor: the kernels read strided
    memory, and torch's own errors from deep inside the path do not say what went wrong."""
    for t in tensors:
        if isinstance(t, Tensor) and (t.layout is not _STRIDED or t.is_nested):
            nested = t.is_nested
            kind = "nested" if nested else str(t.layout).removeprefix("torch.")
            hint = "call it on each component" if nested else "convert with .to_dense()"
            raise TypeError(f"twopass.torch.{name}: {kind} tensors are not supported ({hint})")


def _dim(dim: int, nd: int) -> int:
    d = dim + nd if dim < 0 else dim
    if not 0 <= d < nd:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-nd}, {nd - 1}], but got {dim})")
    return d


def _split(x: Tensor, d: int) -> tuple[Tensor, int, int, int]:
    """(contiguous x, outer, n, inner) of x's shape around dim d."""
    if not x.is_contiguous():
        x = x.contiguous()  # what torch's own CPU softmax does with a strided input
    shape = x.shape
    n = shape[d]
    inner = math.prod(shape[d + 1 :]) if d + 1 < len(shape) else 1
    outer = math.prod(shape[:d]) if d else 1
    return x, outer, n, inner


def softmax_forward(x: Tensor, dim: int, log: bool) -> Tensor:
    """softmax (log_softmax when `log`) of a float32/float64/float16/bfloat16 CPU tensor with >= 1 dims,
    into a tensor with the strides of ``torch.empty_like(x)``. Every call of the eager
    path runs this: each attribute lookup shows on a row of 1024 floats."""
    nd = x.dim()
    if (dim == -1 or dim == nd - 1) and x.is_contiguous():  # the common case: rows of n
        dt = x.dtype
        item = _FWD_BYTES[dt]
        size = x.numel()
        y, stream = (_empty_like(x), False) if size * item < _HUGE else _new_output(x)  # (see _new_like)
        if size:
            n = x.shape[-1]
            threads = _threads()
            if item != 2 and not log and size * item <= _SMALL_SOFTMAX_BYTES:
                op, algo = _SOFTMAX, _RELOAD  # _algorithm's answer, without the call
            else:
                op, algo = _algorithm(log, dt, item, n, size, threads)
            _run_ptr(
                op,
                algo,
                _ISA,
                item,
                x.data_ptr(),
                y.data_ptr(),
                size // n,
                n,
                1,
                n,
                1,
                n,
                1,
                threads,
                stream,  # normal stores into fresh pages (_FRESH_STORES)
                dt is torch.bfloat16,
                True,  # on torch's OpenMP team (_core.eager_init)
            )
        return y
    d = _dim(dim, nd)
    if x.is_contiguous():  # another dim of a contiguous x: y as the rows' (on huge pages when large)
        y = _new_output(x)[0]
        _, outer, n, inner = _split(x, d)
        _softmax_into(x, y, outer, n, inner, log)
        return y
    y = _empty_like(x)
    if y.stride() == x.stride():  # dense in another order (a transpose): both seen in memory order
        perm = sorted(range(nd), key=lambda i: (-x.stride(i), -x.shape[i]))
        xp, yp = x.permute(perm), y.permute(perm)
        if xp.is_contiguous() and yp.is_contiguous():
            _, outer, n, inner = _split(xp, perm.index(d))
            _softmax_into(xp, yp, outer, n, inner, log)
            return y
    xc, outer, n, inner = _split(x, d)  # overlapping or with gaps: a contiguous copy
    yc = _empty_like(xc)
    _softmax_into(xc, yc, outer, n, inner, log)
    return y.copy_(yc)


def _softmax_into(x: Tensor, y: Tensor, outer: int, n: int, inner: int, log: bool) -> None:
    """The kernel call on contiguous x and y seen as (outer, n, inner)."""
    size = outer * n * inner
    if size == 0:
        return
    item = _FWD_BYTES[x.dtype]
    threads = _threads()
    op, algo = _algorithm(log, x.dtype, item, n, size, threads, inner)
    row = n * inner
    _run_ptr(
        op,
        algo,
        _ISA,
        item,
        x.data_ptr(),
        y.data_ptr(),
        outer,
        n,
        inner,
        row,
        inner,
        row,
        inner,
        threads,
        False,  # normal stores: y is fresh (_new_like), see _FRESH_STORES
        x.dtype is torch.bfloat16,
        True,
    )


def _algorithm(
    log: bool, dtype: torch.dtype, item: int, n: int, size: int, threads: int, inner: int = 1
) -> tuple[int, int]:
    """(op, algorithm) codes: algorithm="auto" (_softmax.auto_algorithm), with the NumPy
    path's shortcuts for small float32/float64 calls, so that both give the same bits."""
    if inner > 1:
        op = "log_softmax" if log else "softmax"
        return (_LOG_SOFTMAX if log else _SOFTMAX), _ALGO[auto_algorithm(op, dtype, n, size, threads, inner=inner)]
    if item == 2:
        return (_LOG_SOFTMAX if log else _SOFTMAX), _ALGO[
            auto_algorithm("log_softmax" if log else "softmax", dtype, n, size, threads)
        ]
    if log:
        return _LOG_SOFTMAX, (_RELOAD if n * item < SHORT_ROW_BYTES else _TWO_PASS)
    if size * item <= _SMALL_SOFTMAX_BYTES:
        return _SOFTMAX, _RELOAD
    return _SOFTMAX, _ALGO[auto_algorithm("softmax", dtype, n, size, threads)]


def logsumexp_forward(x: Tensor, dim: int, keepdim: bool) -> Tensor:
    """logsumexp of a float32/float64/float16/bfloat16 CPU tensor with >= 1 dims: the two-pass algorithm's
    first pass alone."""
    d = _dim(dim, x.dim())
    x, outer, n, inner = _split(x, d)
    shape = list(x.shape)
    if keepdim:
        shape[d] = 1
    else:
        del shape[d]
    y = x.new_empty(shape)
    if outer * inner == 0:
        return y
    if n == 0:  # the empty sum's log (torch.logsumexp's too); x may have no memory at all
        return y.fill_(-math.inf)
    _run_ptr(
        _LSE,
        _TWO_PASS,
        _ISA,
        _FWD_BYTES[x.dtype],
        x.data_ptr(),
        y.data_ptr(),
        outer,
        n,
        inner,
        n * inner,
        inner,
        inner,
        0,
        _threads(),
        False,
        x.dtype is torch.bfloat16,
        True,
    )
    return y


def softmax_backward(g: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    """grad_x of softmax (y * (g - sum(g * y))) or log_softmax (g - exp(y) * sum(g)):
    twopass's kernels for contiguous g and y of one dtype (rows over the last dim,
    panels of columns over another), torch's otherwise."""
    nd = y.dim()
    if (
        nd
        and -nd <= dim < nd
        and g.dtype == y.dtype
        and y.dtype in _FWD_BYTES
        and g.is_contiguous()
        and y.is_contiguous()
        and g.shape == y.shape
    ):
        gx, stream = _new_output(y)
        _, outer, n, inner = _split(y, dim % nd)  # (y is contiguous: no copy)
        if outer and n and inner:
            _backward_ptr(
                _LOG_SOFTMAX if log else _SOFTMAX,
                _ISA,
                _FWD_BYTES[y.dtype],
                g.data_ptr(),
                y.data_ptr(),
                0,
                gx.data_ptr(),
                outer,
                n,
                n * inner,
                n * inner,
                n * inner,
                _threads(),
                stream,  # normal stores into fresh pages (_FRESH_STORES); panels always
                y.dtype is torch.bfloat16,
                True,
                inner,
            )
        return gx
    fn = torch._log_softmax_backward_data if log else torch._softmax_backward_data
    return fn(g.to(y.dtype), y, dim, y.dtype)


def logsumexp_backward(g: Tensor, x: Tensor, lse: Tensor, dim: int, keepdim: bool) -> Tensor:
    """grad_x of logsumexp: g * exp(x - lse), g and lse broadcast along `dim`."""
    nd = x.dim()
    if (
        nd
        and (dim == -1 or dim == nd - 1)
        and g.dtype == x.dtype == lse.dtype
        and x.dtype in _FWD_BYTES
        and g.is_contiguous()
        and x.is_contiguous()
        and lse.is_contiguous()
        and g.numel() == lse.numel()
    ):
        gx, stream = _new_output(x)
        n = x.shape[-1]
        rows = x.numel() // n if n else 0
        if rows:
            _backward_ptr(
                _LSE,
                _ISA,
                _FWD_BYTES[x.dtype],
                g.data_ptr(),
                x.data_ptr(),
                lse.data_ptr(),
                gx.data_ptr(),
                rows,
                n,
                0,
                n,
                n,
                _threads(),
                stream,  # normal stores into fresh pages (_FRESH_STORES)
                x.dtype is torch.bfloat16,
                True,
                1,
            )
        return gx
    if nd and not keepdim:
        g, lse = g.unsqueeze(dim), lse.unsqueeze(dim)
    wide = torch.promote_types(x.dtype, torch.float32)
    dx = g.to(wide) * torch.exp(x.to(wide) - lse.to(wide))
    return dx.to(x.dtype)


# Double backward: under create_graph the backward is written in torch operations
# (differentiable: y is the saved output, which keeps its own grad_fn); otherwise the
# kernels run.
def _softmax_grad_ops(g: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    if log:
        return g - torch.exp(y) * g.sum(dim, keepdim=True)
    return y * (g - (g * y).sum(dim, keepdim=True))


def softmax_fwd(x: Tensor, dim: int, log: bool) -> Tensor:
    """The forward of the autograd Function and of the C++ node (grad mode is off)."""
    y = eager_rows(x, dim, log)
    return softmax_forward(x, dim, log) if y is None else y


def softmax_bwd(g: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    """The backward of the autograd Function and of the C++ node."""
    if torch.is_grad_enabled():
        return _softmax_grad_ops(g, y, dim, log)
    gx = eager_backward(g, y, None, dim, _LOG_SOFTMAX if log else _SOFTMAX)
    return softmax_backward(g, y, dim, log) if gx is None else gx


class SoftmaxFunction(torch.autograd.Function):
    """softmax / log_softmax with the backward above (eager, when x needs a gradient,
    until the C++ node (_node.py) is loaded)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, log: bool) -> Tensor:
        y = softmax_fwd(x, dim, log)
        ctx.dim, ctx.log = dim, log
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        (y,) = ctx.saved_tensors
        return softmax_bwd(g, y, ctx.dim, ctx.log), None, None


def logsumexp_grad_ops(g: Tensor, x: Tensor, r: Tensor, dim: int, keepdim: bool) -> Tensor:
    if x.dim() and not keepdim:
        g, r = g.unsqueeze(dim), r.unsqueeze(dim)
    return g * torch.exp(x - r)


def logsumexp_fwd(x: Tensor, dim: int, keepdim: bool) -> Tensor:
    """The forward of the autograd Function and of the C++ node (grad mode is off)."""
    r = eager_lse(x, dim, keepdim)
    return logsumexp_forward(x, dim, keepdim) if r is None else r


def logsumexp_bwd(g: Tensor, x: Tensor, r: Tensor, dim: int, keepdim: bool) -> Tensor:
    """The backward of the autograd Function and of the C++ node."""
    if torch.is_grad_enabled():
        return logsumexp_grad_ops(g, x, r, dim, keepdim)
    gx = eager_backward(g, x, r, dim, _LSE)
    return logsumexp_backward(g, x, r, dim, keepdim) if gx is None else gx


class LogSumExpFunction(torch.autograd.Function):
    """logsumexp with the backward above (eager, when x needs a gradient, until the C++
    node is loaded)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, keepdim: bool) -> Tensor:
        r = logsumexp_fwd(x, dim, keepdim)
        ctx.dim, ctx.keepdim = dim, keepdim
        ctx.save_for_backward(x, r)
        return r

    @staticmethod
    def backward(ctx, g: Tensor):
        x, r = ctx.saved_tensors
        return logsumexp_bwd(g, x, r, ctx.dim, ctx.keepdim), None, None


# Function.apply's Python half unwraps functorch's dead wrappers (a pytree walk, ~4 us
# a call); eager_ok has already ruled functorch out, so the C half is called directly.
_c_apply = torch._C._FunctionBase.__dict__["apply"]
_function_softmax_apply = _c_apply.__get__(None, SoftmaxFunction)
_function_logsumexp_apply = _c_apply.__get__(None, LogSumExpFunction)


# softmax_apply(x, dim, log), logsumexp_apply(x, dim, keepdim) and ce_apply(logits, ...,
# extras): the differentiable calls. Callers look them up on this module
# (`_eager.softmax_apply`): the first call starts loading the C++ node (_node.py), which
# replaces all three once it is ready; until then, and with TWOPASS_TORCH_NODE=0 or no
# compiler, the autograd Functions above.
def use_node(node) -> None:
    """Take the C++ node's paths (None: the autograd Functions'; tests compare the two)."""
    from . import _cross_entropy as ce  # (which imports this module)

    global softmax_apply, logsumexp_apply, ce_apply
    if node is None:
        softmax_apply, logsumexp_apply = _function_softmax_apply, _function_logsumexp_apply
        ce_apply = ce.function_ce_apply
        return
    node.init(
        _core.c_api(),
        _SOFTMAX,
        _LOG_SOFTMAX,
        _LSE,
        softmax_fwd,
        softmax_bwd,
        logsumexp_fwd,
        logsumexp_bwd,
        ce.ce_fwd,
        ce.ce_bwd,
    )
    softmax_apply, logsumexp_apply, ce_apply = node.softmax, node.logsumexp, node.cross_entropy


def _start_node() -> None:
    use_node(None)
    _node.start(use_node)


def _first_softmax_apply(x: Tensor, dim: int, log: bool) -> Tensor:
    _start_node()
    return softmax_apply(x, dim, log)


def _first_logsumexp_apply(x: Tensor, dim: int, keepdim: bool) -> Tensor:
    _start_node()
    return logsumexp_apply(x, dim, keepdim)


def _first_ce_apply(*args):
    _start_node()
    return ce_apply(*args)


softmax_apply = _first_softmax_apply
logsumexp_apply = _first_logsumexp_apply
ce_apply = _first_ce_apply  # twopass.torch.cross_entropy's (_cross_entropy.py)
