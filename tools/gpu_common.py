"""What tools/gpu_bench.py and tools/gpu_ce_bench.py share: loading a twopass.triton module
from the source tree, the timer, the device's copy bandwidth, the --compile hook that
compiles each launch offline for sm_90 and reads its resource usage (and the table cells
that report it), and writing the results file."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_triton_module(name: str):
    """twopass.triton.<name>, from the source tree (by path if the twopass package, whose
    compiled CPU core may be missing here, does not import)."""
    sys.path.insert(0, str(ROOT / "src"))
    try:
        return importlib.import_module(f"twopass.triton.{name}")
    except ImportError:
        pkg = ROOT / "src" / "twopass" / "triton"
        if "_twopass_triton" not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                "_twopass_triton", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
            )
            mod = importlib.util.module_from_spec(spec)
            sys.modules["_twopass_triton"] = mod
            spec.loader.exec_module(mod)
        return importlib.import_module(f"_twopass_triton.{name}")


def bench_ms(fn, dry, grad_to_none=None, rep=100):
    """Median milliseconds of fn (triton's do_bench); under the interpreter (`dry`), the
    wall-clock of one call after a warm-up."""
    if dry:
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def copy_bandwidth(dry):
    """(copy GB/s counting bytes read plus written, read GB/s) over 1 GiB on the device."""
    if dry:
        return 1.0, 1.0
    from triton.testing import do_bench

    src = torch.empty(1 << 28, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t_copy = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    t_read = do_bench(lambda: src.sum(), warmup=50, rep=300, return_mode="median")
    return 2 * (1 << 30) / t_copy / 1e6, (1 << 30) / t_read / 1e6


_PTR = {
    torch.float32: "*fp32",
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.int32: "*i32",
    torch.int64: "*i64",
}


def compile_hook(tmp: str, hidden_consts=()):
    """A launch hook (for a module's _LAUNCH_HOOK) that compiles each distinct launch for
    sm_90 instead of running it, and appends its resource usage to hook.last; hook.seen
    holds the distinct variants. `hidden_consts`: constexprs left out of the report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    Path(tmp).mkdir(parents=True, exist_ok=True)
    seen: dict = {}

    def hook(kernel, grid, call_args, consts, warps):
        sig, attrs, spec = {}, {}, dict(consts)
        for i, (nm, v) in enumerate(zip(kernel.arg_names, call_args)):
            nospec = getattr(kernel.params[i], "do_not_specialize", False)
            if isinstance(v, torch.Tensor):
                sig[nm] = _PTR[v.dtype]
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
        key = (kernel.fn.__name__, tuple(sorted(sig.items())), tuple(sorted(map(str, spec.items()))), warps)
        if key in seen:
            hook.last.append({**seen[key], "grid": grid})
            return
        t0 = time.perf_counter()
        ck = triton.compile(ASTSource(kernel, sig, spec, attrs), target=target, options={"num_warps": warps})
        ptx = ck.asm["ptx"]
        cubin = Path(tmp) / f"k{len(seen)}.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        res = subprocess.run([str(bindir / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True)
        usage = re.findall(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res.stdout)
        reg, stack, shared, local = usage[0] if usage else ("?",) * 4
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


def compile_cells(info: dict, scalar_loads: bool = False) -> str:
    """The --compile table's cells for one launch the hook saw (kernel .. ex2)."""
    consts = ",".join(f"{k}={v}" for k, v in info["consts"].items())
    ld = f" | {info['ld_scalar']}" if scalar_loads else ""
    return (
        f"{info['kernel']} | {consts} | {info['warps']} | {info['grid']} | {info['regs']} "
        f"| {info['stack']}/{info['local']} | {info['ld_v4']}/{info['st_v4']}{ld} | {info['ex2']}"
    )


def write_results(json_arg: str, dry: bool, name: str, meta: dict, rows: list) -> None:
    """{"meta", "results"} to --json, else $OUT/<name>.json (/tmp/<name>_dry.json when dry)."""
    default = Path(f"/tmp/{name}_dry.json") if dry else Path(os.environ.get("OUT", ".")) / f"{name}.json"
    out = Path(json_arg) if json_arg else default
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"\nwrote {out}")
