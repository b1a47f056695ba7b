"""Which instruction set runs, how many threads, and what this machine is.

All run-time choices live here: the ISA is detected once at import (the C++ core asks
the CPU), `TWOPASS_ISA` may force a lower one, `TWOPASS_NUM_THREADS` sets the default
thread count, `TWOPASS_PREFETCH_BYTES` the kernels' software-prefetch distance,
`TWOPASS_SPIN_US` how long idle worker threads wait for the next call before sleeping,
`TWOPASS_AVX512_BF16=0` keeps bfloat16 off AVX512-BF16's conversion instruction.
`info()` reports all of it.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import cache
from pathlib import Path
from typing import Any

from . import _core

# The codes of the C++ core (csrc/codes.h, the one table of them), as {name: code}:
# instruction sets (worst to best), operations, algorithms and element types.
ISA_CODES: dict[str, int] = dict(sorted(_core.ISA_CODES.items(), key=lambda item: item[1]))
OP_CODES: dict[str, int] = dict(_core.OP_CODES)
ALGO_CODES: dict[str, int] = dict(_core.ALGO_CODES)
DTYPE_CODES: dict[str, int] = dict(_core.DTYPE_CODES)  # element types (halves as uint16 views)
_ALL_ISAS = tuple(ISA_CODES)


def isa_supported() -> list[str]:
    """The ISAs this build has and this CPU (and OS) can run, worst to best."""
    return [name for name, code in ISA_CODES.items() if _core.isa_compiled(code) and _core.isa_supported(code)]


def _select_isa() -> str:
    supported = isa_supported()
    forced = os.environ.get("TWOPASS_ISA", "").strip().lower()
    if not forced:
        return supported[-1]
    if forced not in _ALL_ISAS:
        raise RuntimeError(
            f"TWOPASS_ISA={forced!r} is not an instruction set twopass knows; choose one of {', '.join(_ALL_ISAS)}"
        )
    if forced not in supported:
        raise RuntimeError(
            f"TWOPASS_ISA={forced!r}: this CPU or build cannot run it (available here: {', '.join(supported)})"
        )
    return forced


ISA = _select_isa()

# How far ahead of their loads the exp-heavy passes prefetch (csrc/kernels/loops.h). The
# best distance grows with one core's memory bandwidth times its latency: 2 KiB was best
# on a Zen 3 (AVX2, compute-bound, where it matters least: 8-16 KiB were within 3%
# there); on a Zen 5 with AVX-512, 8 KiB took a 2^24-float softmax from 5.18 to 4.78 ms
# and a 4096x4096 one from 4.81 to 3.78 ms (cold, one thread).
DEFAULT_PREFETCH_BYTES = 8192


def _env_int(name: str, default: int, hi: int, unit: str) -> int:
    """An integer setting from the environment variable `name`, in 0 .. hi; `default`
    when unset. A bad value stops the import: a setting silently ignored is worse."""
    env = os.environ.get(name, "").strip()
    if not env:
        return default
    try:
        n = int(env)
    except ValueError:
        raise RuntimeError(f"{name}={env!r} is not an integer") from None
    if not 0 <= n <= hi:
        raise RuntimeError(f"{name}={env!r} must be in 0 .. {hi} ({unit})")
    return n


PREFETCH_BYTES = _env_int("TWOPASS_PREFETCH_BYTES", DEFAULT_PREFETCH_BYTES, 1 << 20, "bytes")
_core.set_prefetch_bytes(PREFETCH_BYTES)

# Multi-threaded calls run on a pool of worker threads kept between calls
# (csrc/thread_pool.cpp), which spin this long after a call before they sleep: a call
# that finds them awake starts in well under a microsecond, one that wakes them pays the
# system's wake-up latency (the caller starts on its own share meanwhile). Starting
# threads per call, as before the pool, cost ~30 us each on a 2-core VM. Spinning longer
# keeps back-to-back NumPy calls fast but takes a core from whatever runs next: in a
# torch loop (cross-entropy forward + backward of 8x32000, 2 threads, Zen 5 VM) a call
# took 100-123 us with 0, 118-146 with 50, 158-205 with 200 (threads started per call:
# 145-152); a float32 softmax of 64x1024 on 2 threads, back to back, 17-19 us with 0,
# 10-12 with 50 and 20 (one thread: 15-22).
DEFAULT_SPIN_US = 50
SPIN_US = _env_int("TWOPASS_SPIN_US", DEFAULT_SPIN_US, 1_000_000, "microseconds")
_core.set_spin_us(SPIN_US)


def _select_avx512_bf16() -> bool:
    """bfloat16 outputs on AVX-512 narrowed by AVX512-BF16's vcvtneps2bf16 where the CPU
    has it (the same bits as the integer rounding it replaces; a bfloat16 softmax of 64K
    elements in cache 26.4 -> 22.6 us on a Zen 5 core), unless TWOPASS_AVX512_BF16=0."""
    env = os.environ.get("TWOPASS_AVX512_BF16", "").strip()
    if env not in ("", "0", "1"):
        raise RuntimeError(f"TWOPASS_AVX512_BF16={env!r} must be 0 or 1")
    return env != "0" and _core.avx512_bf16_supported()


_core.set_avx512_bf16(_select_avx512_bf16())


def isa_code(isa: str | None) -> int:
    """Code of `isa` (None: the selected one), checking the CPU can run it."""
    if isa is None:
        return ISA_CODES[ISA]
    if isa not in isa_supported():
        raise ValueError(f"isa={isa!r} is not available on this CPU (available: {', '.join(isa_supported())})")
    return ISA_CODES[isa]


@cache
def default_threads() -> int:
    """TWOPASS_NUM_THREADS if set (read once), else the cores this process may use."""
    env = os.environ.get("TWOPASS_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"TWOPASS_NUM_THREADS={env!r} is not an integer") from None
        if n < 1:
            raise ValueError(f"TWOPASS_NUM_THREADS={env!r} must be >= 1")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, scale in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if text.endswith(suffix):
            return int(text[:-1]) * scale
    return int(text)


@cache
def cache_sizes() -> dict[str, int]:
    """Data cache sizes in bytes of one core's view (L1d, L2, L3), from Linux sysfs."""
    sizes: dict[str, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")) if root.exists() else []:
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            size = _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            sizes[f"L{level}" + ("d" if level == "1" else "")] = size
    # Conservative defaults where sysfs says nothing (the values only steer streaming
    # stores and benchmark labels).
    sizes.setdefault("L1d", 32 << 10)
    sizes.setdefault("L2", 1 << 20)
    sizes.setdefault("L3", 32 << 20)
    return sizes


def mesh_l3(caches: dict[str, int]) -> bool:
    """The last-level cache is a many-core server's shared mesh (more than 128 L2s of it)
    rather than a core complex's (Zen: 32 MiB over 512 KiB-1 MiB L2s, 32-64 of them)."""
    return caches["L3"] > 128 * caches["L2"]


@cache
def stream_min_bytes() -> int:
    """Outputs larger than this, when the caller gives them (`out=`), are written with
    streaming stores (_arrays.streaming_stores): past the cache one core can count on.
    That is the L3 of a core complex, but only 16x the L2 on a mesh L3: its size is the
    whole server's, shared with other cores and tenants. Xeon VM (2 MiB L2, 504 MiB mesh
    L3), float32 into `out=`, rows of 4096, streaming / normal stores (medians, min of 2
    rounds; tools/streaming_stores.py): y 16 MiB cold 0.82-0.96 but hot 1.04-1.16 (one
    thread and two), y 32 MiB hot 0.84-1.06 cold 0.83-0.87, y 64 MiB hot 0.78-1.03 cold
    0.78-1.00; one row of 2^24 (y 64 MiB) cold softmax 0.83, log_softmax 0.74."""
    caches = cache_sizes()
    return 16 * caches["L2"] if mesh_l3(caches) else caches["L3"]


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    fields = _cpuinfo()
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, (fields.get("flags") or fields.get("Features") or "").split()


def splits_256bit_ops(vendor: str, family: int, model: int) -> bool:
    """Whether a core runs each 256-bit AVX instruction as two 128-bit halves: AMD's Zen
    and Zen+ (family 17h, models below 30h; Zen 2 from 30h has 256-bit units) and Hygon's
    Dhyana (family 18h), from /proc/cpuinfo's vendor_id, cpu family and model."""
    zen1 = vendor == "AuthenticAMD" and family == 0x17 and model < 0x30
    return zen1 or (vendor == "HygonGenuine" and family == 0x18)


def _vendor_family_model() -> tuple[str, int, int] | None:
    """/proc/cpuinfo's vendor_id, cpu family and model (None where it does not say)."""
    fields = _cpuinfo()
    try:
        return fields["vendor_id"], int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return None


@cache
def avx2_half_width() -> bool:
    """This CPU's AVX2 runs at half width (splits_256bit_ops): its exp costs twice as many
    cycles per element as on a core with 256-bit units, which moves auto's crossovers
    (_softmax.exp_weight). False where /proc/cpuinfo does not say."""
    cpu = _vendor_family_model()
    return cpu is not None and splits_256bit_ops(*cpu)


def splits_512bit_ops(vendor: str, family: int, model: int) -> bool:
    """Whether a core runs each 512-bit AVX-512 instruction as two 256-bit halves: AMD's
    Zen 4 (family 19h; Zen 3, the rest of the family, has no AVX-512 at all), from
    /proc/cpuinfo's vendor_id, cpu family and model. Zen 5 (1Ah) and Intel's AVX-512
    cores have 512-bit units."""
    return vendor == "AuthenticAMD" and family == 0x19


@cache
def avx512_half_width() -> bool:
    """This CPU's AVX-512 runs at half width (splits_512bit_ops): its float64 exp costs
    twice as many cycles per element as on a core with 512-bit units, which moves auto's
    crossovers (_softmax.exp_weight). False where /proc/cpuinfo does not say."""
    cpu = _vendor_family_model()
    return cpu is not None and splits_512bit_ops(*cpu) and "avx512f" in _cpuinfo().get("flags", "").split()


def info() -> dict[str, Any]:
    """What twopass sees and chose on this machine (`python -m twopass info` prints it).

    Returns
    -------
    dict
        ``cpu`` (model), ``machine``, ``cpu_features`` (the SIMD flags that matter),
        ``isa`` (the instruction set the kernels run), ``isa_forced`` (by
        ``TWOPASS_ISA``), ``isa_supported`` (compiled and runnable here, worst to best),
        ``caches`` (bytes per level), ``threads`` (the default thread count),
        ``prefetch_bytes`` (the kernels' software-prefetch distance), ``spin_us`` (how
        long idle worker threads wait for work before sleeping), ``avx512_bf16``
        (bfloat16 narrowed by AVX512-BF16's instruction), ``avx2_half_width`` (256-bit
        instructions run as two halves: AMD Zen and Zen+), ``avx512_half_width`` (512-bit
        instructions run as two halves: AMD Zen 4), ``torch_openmp`` (the OpenMP
        runtime whose team runs twopass.torch's parallel calls; None: twopass's own pool,
        or twopass.torch not imported), ``torch_node`` (twopass.torch's C++ autograd node:
        loaded, building, or why not; None: twopass.torch not imported), and ``versions``
        of twopass and its companions.
    """
    import numpy as np

    from . import __version__

    model, flags = _cpu_model_and_flags()
    wanted = ("sse2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "asimd", "sve")
    return {
        "cpu": model,
        "machine": platform.machine(),
        "cpu_features": [f for f in wanted if f in flags],
        "isa": ISA,
        "isa_supported": isa_supported(),
        "isa_forced": os.environ.get("TWOPASS_ISA") or None,
        "caches": dict(cache_sizes()),
        "threads": default_threads(),
        "prefetch_bytes": _core.prefetch_bytes(),
        "spin_us": _core.spin_us(),
        "avx512_bf16": _core.avx512_bf16(),
        "avx2_half_width": avx2_half_width(),
        "avx512_half_width": avx512_half_width(),
        # (never imports torch: only what an imported twopass.torch chose)
        "torch_openmp": getattr(sys.modules.get("twopass.torch._eager"), "OPENMP_RUNTIME", None),
        "torch_node": node.status() if (node := sys.modules.get("twopass.torch._node")) else None,
        "versions": {
            "twopass": __version__,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            **{name: _version_of(name) for name in ("torch", "scipy", "onnxruntime", "ml_dtypes", "jax")},
        },
    }


def _version_of(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        return None
