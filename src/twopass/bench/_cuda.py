"""What `--device cuda` shares (the softmax family in _softmax_cuda, the cross-entropy in
_cross_entropy_cuda): the device check, the timer, the copy bandwidth that makes the HBM
floor, peak memory, and --compile's offline sm_90 build of each launch.

The timer is factored so that the whole path runs without a GPU under TRITON_INTERPRET=1
(the kernels on CPU tensors, tiny shapes, timings meaningless: a smoke run of the
benchmark's own logic); on a CUDA device it is triton.testing.do_bench's median, which
clears L2 before every timed call.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class NoDevice(ValueError):
    """--device cuda where it cannot run: the command line reports it and exits 2."""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Device:
    torch_device: str  # "cuda", or "cpu" under the interpreter
    name: str
    l2_bytes: int
    interpret: bool

    def machine(self) -> dict[str, Any]:
        import torch
        import triton

        return {
            "device": self.name,
            "l2_bytes": self.l2_bytes,
            "interpret": self.interpret,
            "versions": {"torch": torch.__version__, "triton": triton.__version__},
        }


def open_device(compile_only: bool = False) -> Device:
    """The device --device cuda runs on, or NoDevice saying why there is none.
    `compile_only` (--compile): needs triton, not a GPU."""
    try:
        import torch
    except ImportError:
        raise NoDevice("--device cuda needs torch (pip install torch)") from None
    try:
        import triton  # noqa: F401
    except ImportError:
        raise NoDevice("--device cuda needs triton (pip install triton; Linux only)") from None
    if compile_only:
        return Device("meta", "sm_90 (offline compile)", 50 << 20, False)
    if interpreting():
        return Device("cpu", "Triton interpreter on the CPU (timings meaningless)", 50 << 20, True)
    if not torch.cuda.is_available():
        raise NoDevice(
            "--device cuda: no CUDA device (torch.cuda.is_available() is False). Run it on a machine with an "
            "NVIDIA GPU; without one, --device cuda --compile builds every kernel for sm_90 offline, and "
            "TRITON_INTERPRET=1 runs this path on tiny CPU tensors (a smoke test, timings meaningless)"
        )
    props = torch.cuda.get_device_properties(0)
    return Device("cuda", props.name, props.L2_cache_size, False)


def triton_module(name: str) -> Any:
    """twopass.triton.<name>, or the package twopass.triton itself for "" (import it only
    after TRITON_INTERPRET is settled)."""
    return importlib.import_module(f"twopass.triton.{name}" if name else "twopass.triton")


def time_ms(dev: Device, fn: Callable[[], Any], rep_ms: int = 100, grad_to_none: Any = None) -> float:
    """Median milliseconds of fn: triton's do_bench on a GPU; under the interpreter, the
    median of three wall-clock calls after one warm-up (the same code path, a CPU timer)."""
    if dev.interpret:
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[1] * 1e3
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median")


def copy_bandwidth(dev: Device) -> tuple[float, float]:
    """(copy GB/s counting bytes read plus written, read GB/s) over 1 GiB on the device:
    the HBM floor of every result. Under the interpreter: 1.0, 1.0 (no meaning)."""
    if dev.interpret:
        return 1.0, 1.0
    import torch

    src = torch.empty(1 << 28, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t_copy = time_ms(dev, lambda d=dst, s=src: d.copy_(s), rep_ms=300)
    t_read = time_ms(dev, lambda s=src: s.sum(), rep_ms=300)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / t_copy / 1e6, (1 << 30) / t_read / 1e6


def peak_mib(dev: Device, fn: Callable[[], Any]) -> float | None:
    """Memory one call allocates beyond what existed before it (its peak), MiB; None
    under the interpreter (no device allocator to ask)."""
    if dev.interpret:
        return None
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def release(dev: Device) -> None:
    if dev.torch_device == "cuda":
        import torch

        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------
# --compile: each launch built offline for sm_90, with its resource usage.
# ----------------------------------------------------------------------------------
def compile_hook(tmp: Path, hidden_consts: tuple[str, ...] = ()) -> Any:
    """A launch hook (for a kernel module's _LAUNCH_HOOK) that compiles each distinct launch
    for sm_90 instead of running it, and appends its resource usage to hook.last; hook.seen
    holds the distinct variants. `hidden_consts`: constexprs left out of the report."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr = {
        torch.float32: "*fp32",
        torch.bfloat16: "*bf16",
        torch.float16: "*fp16",
        torch.int32: "*i32",
        torch.int64: "*i64",
    }
    target = GPUTarget("cuda", 90, 32)
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    tmp.mkdir(parents=True, exist_ok=True)
    seen: dict[Any, dict[str, Any]] = {}

    def hook(kernel, grid, call_args, consts, warps):
        sig, attrs, spec = {}, {}, dict(consts)
        for i, (nm, v) in enumerate(zip(kernel.arg_names, call_args)):
            nospec = getattr(kernel.params[i], "do_not_specialize", False)
            if isinstance(v, torch.Tensor):
                sig[nm] = ptr[v.dtype]
                attrs[(i,)] = [["tt.divisibility", 16]]  # allocations are 256-byte aligned
            elif isinstance(v, float):
                sig[nm] = "fp32"
            elif v == 1 and not nospec:
                sig[nm], spec[nm] = "constexpr", 1  # Triton specializes integers equal to 1
            else:
                sig[nm] = "i32" if -(2**31) <= v < 2**31 else "i64"
                if v % 16 == 0 and not nospec:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        for nm in consts:
            sig[nm] = "constexpr"
        # The divisibility attributes are part of the variant: an n divisible by 16 compiles
        # to other (vector) accesses than one that is not.
        key = (
            kernel.fn.__name__,
            tuple(sorted(sig.items())),
            tuple(sorted(map(str, spec.items()))),
            tuple(sorted(i for (i,) in attrs)),
            warps,
        )
        if key in seen:
            hook.last.append({**seen[key], "grid": grid})
            return
        t0 = time.perf_counter()
        ck = triton.compile(ASTSource(kernel, sig, spec, attrs), target=target, options={"num_warps": warps})
        ptx = ck.asm["ptx"]
        cubin = tmp / f"k{len(seen)}.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        res = subprocess.run([str(bindir / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True)
        usage = re.findall(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res.stdout)
        if not usage:
            raise RuntimeError(f"cuobjdump -res-usage {cubin}: no resource line in its output: {res.stderr.strip()}")
        reg, stack, shared, local = usage[0]
        info = {
            "kernel": kernel.fn.__name__,
            "consts": {k: v for k, v in consts.items() if k not in hidden_consts},
            "warps": warps,
            "grid": grid,
            "regs": reg,
            "stack": stack,
            "shared": shared,
            "local": local,
            "ld_v4": len(re.findall(r"ld\.global[^\n;]*\.v4", ptx)),
            "st_v4": len(re.findall(r"st\.global[^\n;]*\.v4", ptx)),
            "ld_scalar": len(re.findall(r"ld\.global(?![^\n;]*\.v[24])[^\n;]*", ptx)),
            "ex2": len(re.findall(r"ex2\.approx", ptx)),
            "compile_s": round(time.perf_counter() - t0, 2),
        }
        seen[key] = info
        hook.last.append(info)

    hook.last = []
    hook.seen = seen
    return hook


COMPILE_COLUMNS = ("kernel", "constexprs", "warps", "grid", "regs", "stack/local", "v4 ld/st", "scalar ld", "ex2")


def compile_cells(info: dict[str, Any]) -> list[str]:
    """The --compile table's cells (COMPILE_COLUMNS) for one launch the hook saw."""
    consts = ",".join(f"{k}={v}" for k, v in info["consts"].items())
    return [
        info["kernel"],
        consts,
        str(info["warps"]),
        str(info["grid"]),
        str(info["regs"]),
        f"{info['stack']}/{info['local']}",
        f"{info['ld_v4']}/{info['st_v4']}",
        str(info["ld_scalar"]),
        str(info["ex2"]),
    ]


def print_compile_report(console: Any, doc: dict[str, Any]) -> None:
    """--compile's table (the softmax family's or the cross-entropy's: same layout)."""
    from rich.table import Table

    tab = Table(title=f"kernels compiled for {doc['machine']['target']}: resources per launch")
    for c in (*doc["case_columns"], *COMPILE_COLUMNS):
        tab.add_column(c, overflow="fold")
    for r in doc["results"]:
        tab.add_row(*map(str, r["case"]), *compile_cells(r))
    console.print(tab)
    console.print(f"{doc['variants']} distinct variants compiled for {doc['machine']['target']}")
