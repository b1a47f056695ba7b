"""What the benchmark measures: shapes, traffic counts, cache regimes, and the case list.

Everything that says how many bytes an algorithm moves lives in `TRAFFIC` below: the
passes each algorithm makes in csrc/softmax.cpp (described in docs/algorithms.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

OPS = ("softmax", "log_softmax", "logsumexp")
ALGORITHMS = ("two_pass", "three_pass_reload", "three_pass_recompute", "online")

# (reads, writes) of the whole row per call: the passes each algorithm makes over memory.
#   softmax   two_pass:             pass 1 sum of (m, e) pairs (R); pass 2 y = m/S * 2^(e-E) (R+W)
#             three_pass_reload:    max (R); y = exp(x - max), s += y (R+W); y *= 1/s in place (R+W)
#                                   (rows beyond its scratch row: see traffic())
#             three_pass_recompute: max (R); s = sum exp(x - max) (R); y = exp(x - max)/s (R+W)
#             online:               running (max, sum) (R); y = exp(x - max)/s (R+W)
#   log_softmax passes are the same except that no algorithm stores exp: the max-first ones
#             read three times (max, sum, y = x - max - log s), the others twice.
#   logsumexp two_pass and online read once; the max-first ones twice (max, then sum).
TRAFFIC: dict[tuple[str, str], tuple[int, int]] = {
    ("softmax", "two_pass"): (2, 1),
    ("softmax", "three_pass_reload"): (3, 2),
    ("softmax", "three_pass_recompute"): (3, 1),
    ("softmax", "online"): (2, 1),
    ("log_softmax", "two_pass"): (2, 1),
    ("log_softmax", "three_pass_reload"): (3, 1),
    ("log_softmax", "three_pass_recompute"): (3, 1),
    ("log_softmax", "online"): (2, 1),
    ("logsumexp", "two_pass"): (1, 0),
    ("logsumexp", "three_pass_reload"): (2, 0),
    ("logsumexp", "three_pass_recompute"): (2, 0),
    ("logsumexp", "online"): (1, 0),
}
# A batch whose rows stay in cache between passes moves each byte once from DRAM:
# 1R + 1W (logsumexp 1R), whatever the algorithm.
RELOAD_SCRATCH_BYTES = 16 << 10  # csrc/kernel_api.h kReloadScratchBytes (_core.RELOAD_SCRATCH_BYTES; tested equal)
RELOAD_WIDE_ROW = 1 << 20  # csrc/kernel_api.h kWideRowElements (_core.RELOAD_WIDE_ROW_ELEMENTS; tested equal)
FUSED_TRAFFIC: dict[str, tuple[int, int]] = {"softmax": (1, 1), "log_softmax": (1, 1), "logsumexp": (1, 0)}
# Peers are charged the least traffic twopass needs for the op (its two-pass count), so
# their GB/s and fraction of the bound compare directly with twopass's two_pass.
PEER_ALGORITHM = "two_pass"

# Row lengths (float32 elements) of the sweep and the batch shapes (rows x row length).
FULL_ROWS = tuple(1 << k for k in range(10, 27))  # 1K .. 64M, powers of 2
FULL_BATCHES = ((4096, 4096), (64, 262144), (32, 128256), (65536, 64))
QUICK_ROWS = (1 << 12, 1 << 18, 1 << 24)  # in L1/L2, in L3, far out of cache (64 MB)
QUICK_BATCHES = ((4096, 4096), (32, 128256))
QUICK_ALGORITHMS = ("two_pass", "three_pass_reload")

LEVELS = ("L1d", "L2", "L3", "DRAM")

# The dtypes users call. float16 and bfloat16 move half float32's bytes (the kernels
# compute them in float32); the sweep's default runs the three (--quick: float32 and
# bfloat16), float64 on request.
DTYPES = ("float32", "bfloat16", "float16", "float64")
DEFAULT_DTYPES = ("float32", "bfloat16", "float16")
QUICK_DTYPES = ("float32", "bfloat16")
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}

# Entry points, timed besides twopass's out= call into a reused buffer (kind "entry",
# algorithm "auto": what a plain call runs):
#   twopass plain       twopass.<op>(x): a fresh output every call (the page faults of
#                       its first touch are part of the time, as for users)
#   twopass out=fresh   twopass.<op>(x, out=np.empty(...)): the user's own fresh buffer
#   twopass.torch       twopass.torch.<op>(tensor, dim=-1): the path torch users take
#                       (it allocates; it has no out=)
#   torch plain         torch.<op>(tensor, -1) without out= (the "torch" peer uses out=)
#   twopass.jax         jax.jit(twopass.jax.<op>)(array, axis=-1), block_until_ready: the
#                       path JAX users take, against the "jax" peer (jax.nn under jit)
ENTRIES = ("twopass plain", "twopass out=fresh", "twopass.torch", "torch plain", "twopass.jax")


@dataclass(frozen=True)
class Regime:
    """Where one call's working set lives, and how many buffer sets the timer cycles
    through so that a "DRAM" measurement really starts every call out of cache."""

    level: str  # "L1d", "L2", "L3" (the working set fits: measured hot) or "DRAM"
    nsets: int  # input/output buffer sets cycled through, call after call


def working_set(shape: tuple[int, ...], itemsize: int, op: str) -> int:
    """Bytes one call touches: x and y (logsumexp: x only; its output is one per row)."""
    nbytes = math.prod(shape) * itemsize
    return nbytes if op == "logsumexp" else 2 * nbytes


def cache_level(nbytes: int, caches: dict[str, int]) -> str:
    """The smallest cache level holding `nbytes` (one core's view), else "DRAM"."""
    for level in LEVELS[:-1]:
        if nbytes <= caches[level]:
            return level
    return "DRAM"


def regime(ws: int, caches: dict[str, int]) -> Regime:
    """A working set that fits a cache is measured hot (same buffers every call). One
    that does not is measured cold: cycle over enough buffer sets that the data touched
    between two uses of a set is at least 2x the last-level cache, so it has been evicted."""
    level = cache_level(ws, caches)
    if level != "DRAM":
        return Regime(level, 1)
    return Regime("DRAM", max(1, math.ceil(2 * caches["L3"] / ws)))


def traffic(
    op: str, algorithm: str, shape: tuple[int, ...], itemsize: int, level: str, caches: dict[str, int], threads: int
) -> tuple[int, int, str]:
    """(reads, writes, basis) of whole-array transfers for one call.

    basis "passes": the algorithm's pass count (rows too long to stay in cache between
    passes, or everything in cache, where the passes run against that cache level).
    basis "row in cache": a batch out of cache whose rows (x and y of the row, one per
    thread) fit in half the last-level cache, so passes 2 and 3 hit the cache.
    """
    rows = math.prod(shape[:-1])
    row_ws = working_set(shape[-1:], itemsize, op)
    if level == "DRAM" and rows > 1 and row_ws * min(threads, rows) <= caches["L3"] // 2:
        return (*FUSED_TRAFFIC[op], "row in cache")
    if (op, algorithm) == ("softmax", "three_pass_reload") and shape[-1] * max(itemsize, 4) > RELOAD_SCRATCH_BYTES:
        # Rows longer than the reload's float32/float64 scratch row: float32 and float64
        # fuse its first two passes (x read once, exp stored in y, rescaled by pass 3);
        # halves store exp in a float32 row of the thread's, which the caches hold (x
        # read once, y written once), and beyond RELOAD_WIDE_ROW recompute exp in pass 3
        # (docs/algorithms.md).
        if itemsize >= 4:
            return (2, 2, "passes")
        return (1, 1, "passes") if shape[-1] <= RELOAD_WIDE_ROW else (3, 1, "passes")
    return (*TRAFFIC[(op, algorithm)], "passes")


def parse_size(text: str) -> tuple[int, ...]:
    """ "16M" -> (16777216,) (one row); "4096x4096" or "32x128K" -> (rows, n)."""
    parts = [p.strip() for p in text.lower().split("x")]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"bad size {text!r}: use N (e.g. 16M) or ROWSxN (e.g. 4096x4096)")
    return tuple(_parse_count(p) for p in parts)


def _parse_count(text: str) -> int:
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError(f"bad count {text!r}")
    return int(digits) * scale


def format_count(n: int) -> str:
    """16777216 -> "16M", 128256 -> "128256", 4096 -> "4K"."""
    for suffix, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def format_shape(shape: tuple[int, ...]) -> str:
    """A row by its length ("16M"); a batch as rows x length in full ("32x128256")."""
    return format_count(shape[0]) if len(shape) == 1 else "x".join(map(str, shape))


def format_bytes(n: float) -> str:
    for suffix, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {suffix}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class Case:
    """One timed measurement. kind: "twopass", "peer" or "probe" (impl names which).
    threads: the thread count of the group it runs in (a single-threaded peer runs in
    the smallest group; one with its own thread pool in the largest)."""

    kind: str
    impl: str
    op: str
    algorithm: str
    shape: tuple[int, ...]
    threads: int
    isa: str = ""
    level: str = ""  # probes: the cache regime they are measured under
    dtype: str = "float32"


@dataclass
class Config:
    """The resolved command line."""

    shapes: list[tuple[int, ...]]
    ops: list[str]
    algorithms: list[str]
    isas: list[str]
    threads: list[int]
    peers: bool
    repeats: int | None  # fixed repeat count, or None: budget by size
    quick: bool
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    entries: list[str] = field(default_factory=list)  # of ENTRIES


def plan_shape(
    cfg: Config,
    shape: tuple[int, ...],
    caches: dict[str, int],
    dtype: str,
    probes: Sequence[str],
    peers: dict[str, str],
) -> list[Case]:
    """Every case for one shape and dtype, in the order they run: per thread count, the
    bandwidth probes first (under each cache regime that one of the ops meets: the bound
    is measured next to what it bounds), then twopass, its other entry points, then the
    peers.

    peers[name] is the peer's threading: "any" (follows the thread count), "one" (a
    single-threaded library: measured once, in the smallest group) or "own" (its own
    thread pool: measured once, in the largest group)."""
    cases: list[Case] = []
    itemsize = ITEMSIZE[dtype]
    levels = sorted({cache_level(working_set(shape, itemsize, op), caches) for op in cfg.ops}, key=LEVELS.index)
    best = cfg.isas[-1]
    for t in cfg.threads:
        cases += [Case("probe", p, "", "", shape, t, level=lv, dtype=dtype) for lv in levels for p in probes]
        for op in cfg.ops:
            for isa in cfg.isas:
                cases += [Case("twopass", "twopass", op, a, shape, t, isa, dtype=dtype) for a in cfg.algorithms]
            cases += [Case("entry", e, op, "auto", shape, t, best, dtype=dtype) for e in cfg.entries]
            for name, mode in peers.items():
                runs_here = {"any": True, "one": t == min(cfg.threads), "own": t == max(cfg.threads)}[mode]
                if runs_here:
                    cases.append(Case("peer", name, op, PEER_ALGORITHM, shape, t, dtype=dtype))
    return cases
