"""Buffers, the timer, the bandwidth probes and the twopass calls.

Timing: every measurement warms up (one call per buffer set: page faults, JIT compiles,
and for in-cache sizes, the cache fill), then takes `repeats` timed repeats. A repeat
is `calls` back-to-back calls (enough that one repeat lasts at least `min_repeat_s`, so
that the clock's resolution and a sub-microsecond call do not meet), cycling through
the buffer sets in a shuffled order; its time per call is the sample. Results are
medians of the samples.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache

import numpy as np

# The NumPy API's internals the benchmark calls: imported here only, the rest of the
# bench takes them from this module.
from twopass._arrays import streaming_stores
from twopass._dispatch import ALGO_CODES, OP_CODES
from twopass._softmax import auto_algorithm, compute  # noqa: F401 - auto_algorithm: used by _analysis


@dataclass(frozen=True)
class Budget:
    """How long to measure: the repeat count follows the size (big sizes need fewer)."""

    min_repeat_s: float  # a repeat loops calls until it lasts this long
    per_case_s: float  # aim for this much timed work per measurement...
    min_repeats: int  # ...but never fewer repeats than this
    max_repeats: int  # ...nor more than this
    fixed_repeats: int | None = None  # --repeats: exactly this many


# Every measurement takes at least 5 repeats, --quick included (its largest row, 2^24
# floats, is timed 5 times at about 10-60 ms a call); the full run up to 21 for small sizes.
QUICK = Budget(min_repeat_s=1e-3, per_case_s=0.08, min_repeats=5, max_repeats=11)
FULL = Budget(min_repeat_s=2e-3, per_case_s=0.2, min_repeats=5, max_repeats=21)


@dataclass
class Timing:
    times_s: list[float]  # seconds per call, one per repeat
    calls: int  # calls per repeat

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))

    def as_dict(self) -> dict[str, object]:
        t = np.asarray(self.times_s)
        return {
            "times_s": [float(v) for v in t],
            "median_s": float(np.median(t)),
            "p20_s": float(np.percentile(t, 20)),
            "p80_s": float(np.percentile(t, 80)),
            "calls_per_repeat": self.calls,
        }


_ORDER = np.random.default_rng(12345)


def measure(calls: Sequence[Callable[[], object]], budget: Budget) -> Timing:
    """Time `calls` (one per buffer set, used in turn) as the module docstring says."""
    estimate = math.inf
    for f in calls:  # warm-up: every set once
        t0 = time.perf_counter()
        f()
        estimate = min(estimate, time.perf_counter() - t0)
    if estimate < 10e-3:  # a second look: the first call may include one-off costs
        t0 = time.perf_counter()
        calls[0]()
        estimate = min(estimate, time.perf_counter() - t0)
    estimate = max(estimate, 1e-8)
    inner = max(1, math.ceil(budget.min_repeat_s / estimate))
    repeats = budget.fixed_repeats or min(
        budget.max_repeats, max(budget.min_repeats, round(budget.per_case_s / (estimate * inner)))
    )
    # Cold sets in a shuffled order (seeded): cycled in allocation order, a kernel's
    # prefetches past the end of a short row (two_pass reaches 8 KiB ahead) fetch the
    # next set, which lies right after it, and that call is not cold (Xeon VM, float32
    # softmax of 1024 elements, cold, in order: two_pass 1.32 us against the reload's
    # 1.65, which did not prefetch; shuffled, 3.4 and 3.6).
    order = _ORDER.permutation(len(calls)) if len(calls) > 2 else np.arange(len(calls))
    calls = [calls[i] for i in order]
    n = len(calls)
    times: list[float] = []
    k = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()  # no collector pauses inside a repeat
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                calls[k % n]()
                k += 1
            times.append((time.perf_counter() - t0) / inner)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(times, inner)


# ----------------------------------------------------------------------------------
# Buffers: the same input values for every implementation; cycled sets for cold runs.
# ----------------------------------------------------------------------------------
@dataclass
class BufferSet:
    x: np.ndarray  # the input
    y: np.ndarray  # softmax / log_softmax output (x's shape)
    lse: np.ndarray  # logsumexp output (x's shape less the last axis)


@dataclass
class Buffers:
    """Input/output sets for one shape. Set 0's input is standard normal (seed 0), as
    are its copies: every implementation, on every set, sees the same numbers."""

    shape: tuple[int, ...]
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    sets: list[BufferSet] = field(default_factory=list)

    def get(self, n: int) -> list[BufferSet]:
        while len(self.sets) < n:
            if self.sets:
                x = self.sets[0].x.copy()
            else:
                x = np.random.default_rng(0).standard_normal(self.shape, dtype=np.float32).astype(self.dtype)
            y = np.zeros_like(x)  # zeros, not empty: the pages are faulted in now, not timed
            self.sets.append(BufferSet(x, y, np.zeros(self.shape[:-1], dtype=self.dtype)))
        return self.sets[:n]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


# ----------------------------------------------------------------------------------
# Bandwidth probes: a read pass and a copy pass over the same buffers.
# ----------------------------------------------------------------------------------
# Below this many bytes per thread, a probe runs on one thread: handing work to a pool
# costs more than the pass itself.
_MIN_BYTES_PER_THREAD = 256 << 10


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="twopass-bench-probe")


def _split(fn: Callable[..., object], arrays: Sequence[np.ndarray], threads: int) -> Callable[[], object]:
    """fn over `threads` equal slices of flat views of `arrays`, in a thread pool (NumPy
    releases the GIL inside its loops)."""
    flat = [a.reshape(-1) for a in arrays]
    parts = min(threads, max(1, flat[0].nbytes // _MIN_BYTES_PER_THREAD))
    if parts == 1:
        return lambda: fn(*flat)
    n = flat[0].size
    bounds = [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]
    chunks = [[a[lo:hi] for a in flat] for lo, hi in bounds]
    pool = _pool(threads)

    def run() -> None:
        for f in [pool.submit(fn, *c) for c in chunks]:
            f.result()

    return run


def probe_calls(kind: str, sets: list[BufferSet], threads: int, isa: str) -> list[Callable[[], object]]:
    """Calls of one probe over each set (the C++ ones: csrc/probes.cpp: read_pass, copy_pass).

    read_numpy:   np.maximum.reduce (one read; float max vectorises and is cheaper
                  than a float sum, whose pairwise summation is compute bound on one core)
    read_twopass: twopass's C++ read pass (a vector max over the row)
    copy_numpy:   np.copyto (1R + 1W, normal stores: the write pays a read-for-ownership)
    copy_twopass: twopass's C++ copy pass, normal stores
    copy_stream:  twopass's C++ copy pass with streaming (non-temporal) stores
    """
    from twopass import _core, _dispatch

    if kind == "read_numpy":
        return [_split(np.maximum.reduce, [s.x], threads) for s in sets]
    if kind == "copy_numpy":
        return [_split(lambda a, b: np.copyto(b, a), [s.x, s.y], threads) for s in sets]
    code = _dispatch.isa_code(isa)
    if kind == "read_twopass":
        return [lambda s=s: _core.read_pass(_as_f32(s.x), code, threads) for s in sets]
    if kind not in ("copy_twopass", "copy_stream"):
        raise ValueError(f"unknown probe {kind!r}; known: {', '.join(PROBES)}")
    stream = kind == "copy_stream"
    return [lambda s=s: _core.copy_pass(_as_f32(s.x), _as_f32(s.y), code, threads, stream) for s in sets]


def _as_f32(a: np.ndarray) -> np.ndarray:
    """The C++ probes take float32: any contiguous buffer, seen as float32 words."""
    return a.reshape(-1).view(np.float32)


PROBES = ("read_numpy", "read_twopass", "copy_numpy", "copy_twopass", "copy_stream")
PROBE_TRAFFIC = {"read": (1, 0), "copy": (1, 1)}  # (reads, writes) of the buffer per call


def probe_family(kind: str) -> str:
    return kind.split("_")[0]


def probe_working_set(kind: str, nbytes: int) -> int:
    return nbytes * (1 + PROBE_TRAFFIC[probe_family(kind)][1])


# ----------------------------------------------------------------------------------
# twopass itself: through the public path, and (small sizes) through the kernel alone.
# ----------------------------------------------------------------------------------
def output_of(op: str, s: BufferSet) -> np.ndarray:
    return s.lse if op == "logsumexp" else s.y


def twopass_calls(op: str, algorithm: str, isa: str, threads: int, sets: list[BufferSet]) -> list[Callable[[], object]]:
    """The call users make, with out=: twopass.softmax / log_softmax / logsumexp (whose
    small calls are one C++ call, csrc/numpy_rows.cpp); `compute` (the function behind
    them) for logsumexp by another algorithm than the one the public function runs
    (two_pass), and where an ISA other than the selected one is named."""
    import twopass
    from twopass import _dispatch

    if isa == _dispatch.ISA and op != "logsumexp":
        f = getattr(twopass, op)
        return [lambda s=s: f(s.x, out=s.y, algorithm=algorithm, threads=threads) for s in sets]
    if isa == _dispatch.ISA and algorithm == "two_pass":
        return [lambda s=s: twopass.logsumexp(s.x, out=s.lse, threads=threads) for s in sets]
    isa_arg = None if isa == _dispatch.ISA else isa
    return [
        lambda s=s: compute(op, s.x, out=output_of(op, s), algorithm=algorithm, threads=threads, isa=isa_arg)
        for s in sets
    ]


class KernelMismatch(RuntimeError):
    """The bare C++ call and the public path disagree: the benchmark stops, not skips."""


def kernel_calls(
    op: str, algorithm: str, isa: str, threads: int, sets: list[BufferSet]
) -> list[Callable[[], object]] | None:
    """The C++ call alone, without the Python layer's checks: what the kernel costs when
    the per-call overhead is not counted. Built against `_core.run`'s argument list
    (csrc/module.cpp) and checked to give bit-identical results to the public path.

    None only where it does not apply (more than 2 dimensions, or rows that are not
    C-contiguous). A failing call raises its exception; a result that differs from the
    public path's raises KernelMismatch: a benchmark of a call that computes something
    else would mean nothing."""
    from twopass import _core, _dispatch

    x0 = sets[0].x
    if x0.ndim > 2 or not x0.flags.c_contiguous or x0.dtype.itemsize not in (2, 4, 8):
        return None
    rows, n = math.prod(x0.shape[:-1]), x0.shape[-1]
    lse = op == "logsumexp"
    ys_outer, ys_n = (1, 0) if lse else (n, 1)
    codes = (OP_CODES[op], ALGO_CODES[algorithm], _dispatch.isa_code(isa))
    bf16 = x0.dtype.name == "bfloat16"  # halves: run_ptr, the raw-pointer form of run

    def call(s: BufferSet) -> None:
        y = output_of(op, s)
        stream = streaming_stores(y, s.x)  # the public path's rule for `out=`
        if x0.dtype.itemsize == 2:
            xp, yp = s.x.ctypes.data, y.ctypes.data
            _core.run_ptr(*codes, 2, xp, yp, rows, n, 1, n, 1, ys_outer, ys_n, threads, stream, bf16, False)
        else:
            _core.run(*codes, s.x, y, rows, n, 1, n, 1, ys_outer, ys_n, threads, stream)

    expect = compute(op, x0, algorithm=algorithm, threads=threads, isa=isa)
    call(sets[0])
    got = output_of(op, sets[0])
    same = (expect == got) | (np.isnan(expect) & np.isnan(got))
    if not same.all():
        bad = np.flatnonzero(~same)
        i = int(bad[0])
        raise KernelMismatch(
            f"{op} {algorithm} {isa} {threads} thread(s), shape {x0.shape}: _core.run differs from the public "
            f"path at {bad.size} of {same.size} elements (first at flat index {i}: {got.flat[i]!r} != "
            f"{expect.flat[i]!r}); has csrc/module.cpp's run() argument list changed?"
        )
    return [lambda s=s: call(s) for s in sets]


# ----------------------------------------------------------------------------------
# The compute floor: the same kernel on data that stays in the L2.
# ----------------------------------------------------------------------------------
def compute_floor_shape(shape: tuple[int, ...], itemsize: int, l2: int) -> tuple[int, ...]:
    """A shape with `shape`'s row length whose x and y fill at most half the L2 (the other
    half: the kernel's other traffic and the neighbours' lines): whole rows when a row
    fits, else one row of as many elements as fit. Per-row costs then weigh as in `shape`
    wherever a row fits, and a long row's per-element cost is the same at any length."""
    cap = max(1, l2 // 2 // (2 * itemsize))  # elements of x (x and y together: half the L2)
    n = shape[-1]
    if n >= cap or len(shape) == 1:
        return (min(n, cap),)
    return (max(1, min(math.prod(shape[:-1]), cap // n)), n)


def api_overhead_s(isa: str) -> float:
    """Median time of twopass.softmax on a 1-element row with out= (as twopass_calls
    calls it): the cost of a call beyond its kernel."""
    import twopass
    from twopass import _dispatch

    x = np.zeros(1, dtype=np.float32)
    y = np.empty_like(x)
    if isa == _dispatch.ISA:
        return measure([lambda: twopass.softmax(x, out=y, algorithm="auto", threads=1)], FULL).median_s
    return measure([lambda: compute("softmax", x, out=y, threads=1, isa=isa)], FULL).median_s
