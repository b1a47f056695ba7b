"""GPU benchmark of twopass's Triton kernels against torch, as fractions of the HBM bound.

    python tools/gpu_bench.py [--quick] [--json out.json] [--ops softmax,log_softmax,...]
    python tools/gpu_bench.py --sweep            # also try launcher settings on the split shapes
    python tools/gpu_bench.py --compile          # no GPU needed: compile every kernel variant the
                                                 # benchmark would launch for sm_90, print registers,
                                                 # spills, shared memory, 16-byte accesses, ex2 count
    TRITON_INTERPRET=1 python tools/gpu_bench.py --dry   # no GPU: run the script's own logic on tiny shapes

The device's copy bandwidth is measured in the same run (a device-to-device copy of 1 GiB,
counting the bytes read plus the bytes written), and each result is reported as GB/s and as a
fraction of the bound for its shape: the least HBM traffic the operation needs over that
bandwidth. Traffic, with a "row" the data one reduction reads (for backward: y and g):

    softmax, log_softmax   1R + 1W if a row fits in half of L2, else 2R + 1W
    logsumexp              1R (+ the small output)
    softmax/log_softmax backward: 2R + 1W (y and g read, dx written) if a row of y and g fits
                           in half of L2, else 4R + 1W
    logsumexp backward     1R + 1W (+ the small g and lse)

Times are medians of triton.testing.do_bench (which clears L2 before every timed call, so no
input is served from cache between calls). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from gpu_common import bench_ms, compile_cells, compile_hook, copy_bandwidth, load_triton_module, write_results

# (label, shape, dim, layout): layout "t" builds the tensor as the transpose of a contiguous one.
SHAPES = [
    ("16384x1024", (16384, 1024), -1, ""),
    ("4096x4096", (4096, 4096), -1, ""),
    ("1024x16384", (1024, 16384), -1, ""),
    ("512x32768", (512, 32768), -1, ""),
    ("256x65536", (256, 65536), -1, ""),
    ("256x131072", (256, 131072), -1, ""),
    ("256x262144", (256, 262144), -1, ""),
    ("64x2^20", (64, 1 << 20), -1, ""),
    ("4x2^24", (4, 1 << 24), -1, ""),
    ("1x2^26", (1, 1 << 26), -1, ""),
    ("4096x4096 dim0", (4096, 4096), 0, ""),  # strided reduced axis, C-contiguous
    ("(4096x4096)^T dim-1", (4096, 4096), -1, "t"),  # transposed: reduced axis strided
    ("(4096x4096)^T dim0", (4096, 4096), 0, "t"),  # transposed: reduced axis contiguous
]
QUICK = {"16384x1024", "1024x16384", "256x262144", "64x2^20", "1x2^26", "(4096x4096)^T dim-1"}
OPS = ("softmax", "log_softmax", "logsumexp", "softmax_bwd", "log_softmax_bwd", "logsumexp_bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DRY_SHAPES = [("4x3000", (4, 3000), -1, ""), ("300x40 dim0", (300, 40), 0, ""), ("(50x70)^T", (50, 70), -1, "t")]

# Launcher settings tried by --sweep on the split shapes (each merged over the defaults).
SWEEP = [
    {},
    {"l2_fraction": 0.125},
    {"l2_fraction": 0.4},
    {"chunk_min": 32768},
    {"chunk_min": 8192},
    {"split_tile_elems": 4096},
    {"split_tile_elems": 16384, "split_warps": 16},
    {"split_warps": 4, "split_tile_elems": 4096},
]


def make_input(shape, layout, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    if layout == "t":
        return torch.randn(shape[::-1], generator=gen, device=device, dtype=torch.float32).to(dtype).t()
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


def traffic(op, shape, dim, esize, l2):
    """The least HBM bytes for op on this shape (see the module docstring)."""
    numel = 1
    for s in shape:
        numel *= s
    n = shape[dim]
    data = numel * esize
    small = numel // n * esize  # one value per row
    if op in ("softmax", "log_softmax"):
        return 2 * data if n * esize <= l2 / 2 else 3 * data
    if op == "logsumexp":
        return data + small
    if op in ("softmax_bwd", "log_softmax_bwd"):
        return 3 * data if 2 * n * esize <= l2 / 2 else 5 * data
    return 2 * data + 2 * small  # logsumexp_bwd


def make_calls(K, op, x, dim, cfg=None):
    """(twopass call, torch call) for op on x, with the backward's inputs prepared."""
    if op == "softmax":
        return (lambda: K._softmax_forward(x, dim, False, cfg=cfg)), (lambda: torch.softmax(x, dim))
    if op == "log_softmax":
        return (lambda: K._softmax_forward(x, dim, True, cfg=cfg)), (lambda: torch.log_softmax(x, dim))
    if op == "logsumexp":
        return (lambda: K._logsumexp_forward(x, dim, cfg=cfg)), (lambda: torch.logsumexp(x, dim))
    g = torch.randn_like(x)
    if op in ("softmax_bwd", "log_softmax_bwd"):
        log = op == "log_softmax_bwd"
        y = (torch.log_softmax if log else torch.softmax)(x, dim)
        tfn = torch._log_softmax_backward_data if log else torch._softmax_backward_data
        return (lambda: K._softmax_backward(g, y, dim, log, cfg=cfg)), (lambda: tfn(g, y, dim, x.dtype))
    lse = torch.logsumexp(x, dim)
    gl = torch.randn_like(lse)
    return (lambda: K._logsumexp_backward(gl, x, lse, dim, cfg=cfg)), (
        lambda: gl.unsqueeze(dim) * torch.exp(x - lse.unsqueeze(dim))
    )


def reference(K, op, x, dim):
    """What the sanity check compares with: torch's result, except for logsumexp_bwd, whose
    torch composite rounds x - lse to bfloat16 (errors of percents): there, float32 maths."""
    tp, tt = make_calls(K, op, x, dim)
    if op != "logsumexp_bwd":
        return tp, tt
    lse = torch.logsumexp(x, dim)
    gl = torch.randn_like(lse)
    tp = lambda: K._logsumexp_backward(gl, x, lse, dim)  # noqa: E731
    return tp, lambda: (gl.float().unsqueeze(dim) * torch.exp(x.float() - lse.float().unsqueeze(dim))).to(x.dtype)


def close(a, b, dtype):
    """Same NaN pattern, and ||a - b|| / ||b|| under 1e-5 (float32) or 1e-2 (bfloat16)
    over the finite elements: a sanity check against torch (the tests check the bounds)."""
    a, b = a.double(), b.double()
    tol = 1e-2 if dtype != torch.float32 else 1e-5
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    fin = torch.isfinite(b)
    return bool(torch.linalg.vector_norm(a[fin] - b[fin]) <= tol * torch.linalg.vector_norm(b[fin]))


def run_bench(args, K):
    dry = args.dry
    dev = "cpu" if dry else "cuda"
    if dry:
        l2, name = 50 * 2**20, "interpreter (timings meaningless)"
    else:
        props = torch.cuda.get_device_properties(0)
        l2, name = props.L2_cache_size, props.name
    copy_gbs, read_gbs = copy_bandwidth(dry)
    import triton

    meta = {
        "device": name,
        "l2_bytes": l2,
        "copy_GBps": copy_gbs,
        "read_GBps": read_gbs,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"# {name}: copy {copy_gbs:.0f} GB/s (read+write), read {read_gbs:.0f} GB/s; L2 {l2 / 2**20:.0f} MiB")
    print(f"# torch {torch.__version__}, triton {triton.__version__}\n", flush=True)
    ops = args.ops.split(",") if args.ops else OPS
    shapes = DRY_SHAPES if dry else [s for s in SHAPES if not args.quick or s[0] in QUICK]
    rows = []
    hdr = "| shape | dtype | op | twopass GB/s | twopass % bound | torch GB/s | torch % bound | kernel | ok |"
    print(hdr + "\n|---|---|---|---:|---:|---:|---:|---|---|", flush=True)
    for label, shape, dim, layout in shapes:
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            x = make_input(shape, layout, dtype, dev)
            for op in ops:
                K._TRACE = []
                ok = close(*(f() for f in reference(K, op, x, dim)), dtype)
                kernels = sorted({k for k, _ in K._TRACE})
                K._TRACE = None
                nbytes = traffic(op, shape, dim, x.element_size(), l2)
                tp, tt = make_calls(K, op, x, dim)
                ms_tp, ms_tt = bench_ms(tp, dry), bench_ms(tt, dry)
                r = {
                    "shape": label,
                    "dims": list(shape),
                    "dim": dim,
                    "layout": layout or "c",
                    "dtype": dname,
                    "op": op,
                    "bytes": nbytes,
                    "twopass_ms": ms_tp,
                    "torch_ms": ms_tt,
                    "twopass_GBps": nbytes / ms_tp / 1e6,
                    "torch_GBps": nbytes / ms_tt / 1e6,
                    "twopass_frac": nbytes / ms_tp / 1e6 / copy_gbs,
                    "torch_frac": nbytes / ms_tt / 1e6 / copy_gbs,
                    "kernel": "+".join(kernels),
                    "ok": ok,
                }
                if args.sweep and any(k.endswith("split") for k in kernels):
                    best = (ms_tp, {})
                    for cfg in SWEEP[1:]:
                        ms = bench_ms(make_calls(K, op, x, dim, cfg)[0], dry)
                        r.setdefault("sweep", []).append({"cfg": cfg, "ms": ms})
                        best = min(best, (ms, cfg), key=lambda b: b[0])
                    r["best_cfg"], r["best_frac"] = best[1], nbytes / best[0] / 1e6 / copy_gbs
                rows.append(r)
                extra = f" (best {100 * r['best_frac']:.0f}% with {r['best_cfg']})" if "best_cfg" in r else ""
                ok_s = "yes" if ok else "NO"
                print(
                    f"| {label} | {dname} | {op} | {r['twopass_GBps']:.0f} | {100 * r['twopass_frac']:.1f}{extra} "
                    f"| {r['torch_GBps']:.0f} | {100 * r['torch_frac']:.1f} | {r['kernel']} | {ok_s} |",
                    flush=True,
                )
            del x
            if not dry:
                torch.cuda.empty_cache()
    write_results(args.json, dry, "gpu_bench", meta, rows)


# ----------------------------------------------------------------------------------
# --compile: what the benchmark would launch, compiled offline for sm_90.
# ----------------------------------------------------------------------------------
def compile_report(args, K):
    hook = compile_hook(args.tmp)
    K._LAUNCH_HOOK = hook
    ops = args.ops.split(",") if args.ops else OPS
    print("| shape | dtype | op | kernel | constexprs | warps | grid | regs | stack/local | v4 ld/st | ld | ex2 |")
    print("|---|---|---|---|---|---:|---:|---:|---|---|---:|---:|")
    try:
        for label, shape, dim, layout in SHAPES:
            for dname in args.dtypes.split(","):
                dtype = DTYPES[dname]
                x = torch.empty(shape[::-1] if layout == "t" else shape, dtype=dtype, device="meta")
                x = x.t() if layout == "t" else x
                for op in ops:
                    hook.last = []
                    if op in ("softmax", "log_softmax"):
                        K._softmax_forward(x, dim, op == "log_softmax")
                    elif op == "logsumexp":
                        K._logsumexp_forward(x, dim)
                    elif op == "logsumexp_bwd":
                        lse = torch.empty(K._reduced_shape(x.shape, dim % 2, False), dtype=dtype, device="meta")
                        K._logsumexp_backward(lse, x, lse, dim)
                    else:
                        K._softmax_backward(torch.empty_like(x), torch.empty_like(x), dim, op == "log_softmax_bwd")
                    for i in hook.last:
                        print(f"| {label} | {dname} | {op} | {compile_cells(i, scalar_loads=True)} |", flush=True)
    finally:
        K._LAUNCH_HOOK = None
    print(f"\n{len(hook.seen)} distinct variants compiled for sm_90")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a subset of the shapes")
    p.add_argument("--ops", default="", help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--json", default="", help="where to write the results (default $OUT/gpu_bench.json)")
    p.add_argument("--sweep", action="store_true", help="try other launcher settings on split shapes")
    p.add_argument("--compile", action="store_true", help="compile for sm_90 offline and report resources")
    p.add_argument("--tmp", default="/tmp/twopass_cubins", help="--compile: where cubins go")
    p.add_argument("--dry", action="store_true", help="TRITON_INTERPRET=1 on the CPU, tiny shapes")
    args = p.parse_args()
    if args.dry:
        os.environ["TRITON_INTERPRET"] = "1"
    K = load_triton_module("softmax")
    if args.compile:
        compile_report(args, K)
    else:
        if not args.dry and not torch.cuda.is_available():
            sys.exit("no CUDA device: use --compile or --dry")
        run_bench(args, K)


if __name__ == "__main__":
    main()
