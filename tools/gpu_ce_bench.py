"""GPU benchmark of twopass's fused cross-entropy (forward + backward) against its peers.

    python tools/gpu_ce_bench.py                 # the shapes below, bf16 and fp32
    python tools/gpu_ce_bench.py --variants      # also smoothing / z-loss / softcap / weight / ignored rows
    python tools/gpu_ce_bench.py --sweep         # also launcher settings of twopass (cfg)
    python tools/gpu_ce_bench.py --compile       # no GPU needed: compile every kernel variant for
                                                 # sm_90, print registers, spills, 16-byte accesses
    TRITON_INTERPRET=1 python tools/gpu_ce_bench.py --dry   # no GPU: the script's logic on tiny shapes

What is timed: one training step's loss and logits gradient, mean reduction, target in range,
from logits that need no gradient graph of their own:

    twopass          scale on the device, cross_entropy_forward(..., grad=new buffer), the loss
                     sum, scale_grad_ by a device 1.0 (returns at once): what twopass.torch does
    twopass-inplace  the same with grad written over the logits
    torch            F.cross_entropy(x, t) + backward (eager)
    torch.compile    the same, compiled (default mode)
    liger            Liger-Kernel's cross entropy + backward, if liger_kernel is importable

The bound is one read and one write of the logits (2 N C E bytes) at the device-to-device copy
bandwidth measured in the same run (a 1 GiB copy, bytes read + written). Each row reports the
median time (triton.testing.do_bench, which flushes L2 before each call), GB/s of that traffic,
the fraction of the bound, and the peak memory allocated by one step beyond its inputs. A
sanity check compares loss and gradient with torch in float32, and twopass is also checked for
bitwise determinism and under CUDA-graph capture. Prints a markdown table; writes JSON to
$OUT/gpu_ce_bench.json (or --json).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from gpu_common import bench_ms, compile_cells, compile_hook, copy_bandwidth, load_triton_module, write_results

SHAPES = [(8192, 32000), (8192, 128256), (4096, 256000)]
DRY_SHAPES = [(6, 300), (3, 1000)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# --variants: options on the middle shape (twopass and torch eager, which composes them).
VARIANTS = {
    "smooth0.1": dict(label_smoothing=0.1),
    "zloss1e-4": dict(z_loss=1e-4),
    "softcap30": dict(softcap=30.0),
    "weight": dict(weight=True),
    "ignore25%": dict(ignore=0.25),
}
# --sweep: twopass launcher settings (each merged over the defaults).
SWEEP = [
    {"split": False},
    {"l2_fraction": 0.125},
    {"l2_fraction": 0.4},
    {"chunk_min": 8192},
    {"chunk_min": 32768},
    {"tile_elems": 4096, "warps": 4},
    {"tile_elems": 16384, "warps": 16},
    {"warps": 4},
    {"l2_hints": False},
]
INPLACE = ("twopass-inplace", "liger")  # methods that overwrite the logits
DRY_CFG = dict(tile_elems=64, cw=16, warps=1, chunk_min=64, k_max=8, l2_bytes=8192, num_sms=2)


def load_liger():
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except Exception:  # not installed, or an incompatible version
        return None
    return liger_cross_entropy


# ----------------------------------------------------------------------------------
# The steps being timed.
# ----------------------------------------------------------------------------------
def make_inputs(n_rows, n, dtype, dev, opts, seed=0):
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = (torch.randn((n_rows, n), generator=gen, device=dev, dtype=torch.float32) * 2).to(dtype)
    t = torch.randint(0, n, (n_rows,), generator=gen, device=dev)
    if opts.get("ignore"):
        t[torch.rand(n_rows, generator=gen, device=dev) < opts["ignore"]] = -100
    w = torch.rand(n, generator=gen, device=dev) + 0.5 if opts.get("weight") else None
    return x, t, w


def twopass_step(K, x, t, w, opts, inplace=False, cfg=None):
    """Loss and gradient as the autograd wrapper computes them, mean reduction, g = 1."""
    valid = t != -100
    n_valid = valid.sum().float()
    if w is not None:
        denom = torch.where(valid, w[t.clamp(min=0)], torch.zeros((), device=x.device)).sum()
    else:
        denom = n_valid
    scale = torch.stack([1.0 / denom, 1.0 / n_valid])
    grad = x if inplace else torch.empty_like(x)
    ce, z, _ = K.cross_entropy_forward(
        x, t, w, scale,
        label_smoothing=opts.get("label_smoothing", 0.0), z_loss=opts.get("z_loss", 0.0),
        softcap=opts.get("softcap"), grad=grad, cfg=cfg,
    )  # fmt: skip
    loss = ce.sum() * scale[0] + z.sum() * scale[1]
    K.scale_grad_(grad, torch.ones((), device=x.device))
    return loss, grad


def torch_loss(x, t, w, opts):
    """docs/cross_entropy.md with torch ops (the z-loss and soft-cap composed)."""
    xc = x
    if opts.get("softcap"):
        c = opts["softcap"]
        xc = c * torch.tanh(x / c)
    loss = F.cross_entropy(xc, t, weight=w, label_smoothing=opts.get("label_smoothing", 0.0))
    if opts.get("z_loss"):
        valid = t != -100
        lse = torch.logsumexp(xc.float(), -1)
        loss = loss + opts["z_loss"] * (lse[valid] ** 2).sum() / valid.sum()
    return loss


def torch_step(x, t, w, opts, fn=torch_loss):
    xg = x.detach().requires_grad_()
    loss = fn(xg, t, w, opts)
    loss.backward()
    return loss, xg.grad


def liger_step(liger, x, t, w, opts):
    xg = x.detach().requires_grad_()  # Liger writes the gradient over the logits
    loss = liger(
        xg, t, weight=w, label_smoothing=opts.get("label_smoothing", 0.0),
        lse_square_scale=opts.get("z_loss", 0.0), softcap=opts.get("softcap"),
    )  # fmt: skip
    if not isinstance(loss, torch.Tensor):  # versions that return (loss, z) or an output record
        loss = loss.loss if hasattr(loss, "loss") else loss[0]
    loss.backward()
    return loss, xg.grad


def close(a_loss, a_grad, b_loss, b_grad, dtype):
    """Loss within 1e-4 (fp32) or 1e-2 (relative; a bf16 peer may reduce in bf16), and
    ||grad - ref|| / ||ref|| under 1e-5 (fp32) or 1e-2."""
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    la, lb = float(a_loss), float(b_loss)
    ok_loss = abs(la - lb) <= (1e-4 if dtype == torch.float32 else 1e-2) * max(1.0, abs(lb))
    ga, gb = a_grad.double(), b_grad.double()
    ok_grad = bool(torch.linalg.vector_norm(ga - gb) <= tol * torch.linalg.vector_norm(gb))
    return ok_loss and ok_grad


# ----------------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------------
def peak_mib(fn, dry):
    """Memory one call allocates beyond what existed before it (its peak), MiB."""
    if dry:
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def graph_check(K, x, t, w, opts, dry):
    """The step captured in a CUDA graph (no host sync may happen inside) gives the eager result."""
    if dry:
        return True
    ref_loss, ref_grad = twopass_step(K, x, t, w, opts)
    static = {}
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        twopass_step(K, x, t, w, opts)  # warm-up (compiles) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static["loss"], static["grad"] = twopass_step(K, x, t, w, opts)
    g.replay()
    torch.cuda.synchronize()
    return bool(torch.equal(static["loss"], ref_loss) and torch.equal(static["grad"], ref_grad))


def run(args, K):
    dry = args.dry
    dev = "cpu" if dry else "cuda"
    import triton

    name = "interpreter (timings meaningless)" if dry else torch.cuda.get_device_properties(0).name
    copy_gbs = copy_bandwidth(dry)[0]
    liger = None if dry else load_liger()
    compiled = None if dry or args.no_compile else torch.compile(torch_loss)
    meta = {
        "device": name,
        "copy_GBps": copy_gbs,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "liger": getattr(sys.modules.get("liger_kernel"), "__version__", None) if liger else None,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"# {name}: copy {copy_gbs:.0f} GB/s (read+write); torch {torch.__version__}, triton {triton.__version__}")
    print(f"# liger: {'yes' if liger else 'not importable'}\n", flush=True)
    hdr = "| shape | dtype | options | method | ms | GB/s (1R+1W) | % of bound | peak MiB | ok |"
    print(hdr + "\n|---|---|---|---|---:|---:|---:|---:|---|", flush=True)
    rows = []
    shapes = DRY_SHAPES if dry else [s for s in SHAPES if not args.shapes or f"{s[0]}x{s[1]}" in args.shapes]
    cfg0 = DRY_CFG if dry else None
    variants = {"plain": {}}
    if args.variants:
        variants.update(VARIANTS)
    for n_rows, n in shapes:
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            for vname, opts in variants.items():
                if vname != "plain" and (n_rows, n) != shapes[min(1, len(shapes) - 1)]:
                    continue
                x, t, w = make_inputs(n_rows, n, dtype, dev, opts)
                nbytes = 2 * x.numel() * x.element_size()
                ref_loss, ref_grad = torch_step(x.float(), t, w, opts)
                # Each method is a function of the logits; those that overwrite them get a copy.
                methods = {
                    "twopass": lambda xi, t=t, w=w, o=opts: twopass_step(K, xi, t, w, o, cfg=cfg0),
                    "twopass-inplace": lambda xi, t=t, w=w, o=opts: twopass_step(K, xi, t, w, o, True, cfg0),
                    "torch": lambda xi, t=t, w=w, o=opts: torch_step(xi, t, w, o),
                }
                if compiled is not None:
                    methods["torch.compile"] = lambda xi, t=t, w=w, o=opts: torch_step(xi, t, w, o, compiled)
                if liger is not None:
                    methods["liger"] = lambda xi, t=t, w=w, o=opts: liger_step(liger, xi, t, w, o)
                if args.sweep:
                    for i, c in enumerate(SWEEP):
                        methods[f"twopass cfg{i} {c}"] = lambda xi, t=t, w=w, o=opts, c=c: twopass_step(
                            K, xi, t, w, o, cfg=c
                        )
                extra = {}
                a = twopass_step(K, x, t, w, opts, cfg=cfg0)
                b = twopass_step(K, x, t, w, opts, cfg=cfg0)
                extra["deterministic"] = bool(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))
                extra["cuda_graph"] = graph_check(K, x, t, w, opts, dry)
                del a, b
                for mname, step in methods.items():
                    xi = x.clone() if mname in INPLACE else x
                    try:
                        loss, grad = step(xi.clone() if mname in INPLACE else xi)
                        ok = close(loss, grad, ref_loss, ref_grad, dtype)
                        del loss, grad
                        mib = peak_mib(lambda s=step, xi=xi: s(xi), dry)
                        ms = bench_ms(lambda s=step, xi=xi: s(xi), dry, rep=200)
                    except Exception as e:  # a peer that does not support an option
                        print(f"| {n_rows}x{n} | {dname} | {vname} | {mname} | failed: {type(e).__name__}: {e} |")
                        continue
                    finally:
                        del xi
                    r = {
                        "shape": [n_rows, n],
                        "dtype": dname,
                        "options": vname,
                        "method": mname,
                        "ms": ms,
                        "bytes": nbytes,
                        "GBps": nbytes / ms / 1e6,
                        "frac_bound": nbytes / ms / 1e6 / copy_gbs,
                        "peak_MiB": mib,
                        "ok": ok,
                        **(extra if mname == "twopass" else {}),
                    }
                    rows.append(r)
                    flags = "yes" if ok else "NO"
                    if mname == "twopass":
                        flags += f", det={'yes' if extra['deterministic'] else 'NO'}"
                        flags += f", graph={'yes' if extra['cuda_graph'] else 'NO'}"
                    print(
                        f"| {n_rows}x{n} | {dname} | {vname} | {mname} | {ms:.3f} | {r['GBps']:.0f} "
                        f"| {100 * r['frac_bound']:.1f} | {mib:.0f} | {flags} |",
                        flush=True,
                    )
                del x, t, w, ref_grad
                if not dry:
                    torch.cuda.empty_cache()
    write_results(args.json, dry, "gpu_ce_bench", meta, rows)


# ----------------------------------------------------------------------------------
# --compile: every kernel variant, compiled offline for sm_90 (no GPU needed).
# ----------------------------------------------------------------------------------
def compile_report(args, K):
    hook = compile_hook(args.tmp, hidden_consts=("P1", "P2"))
    K._LAUNCH_HOOK = hook
    cols = "shape | dtype | options | grad | kernel | constexprs | warps | grid | regs | stack/local | v4 ld/st | ex2"
    print(f"| {cols} |")
    print("|---|---|---|---|---|---|---:|---:|---:|---|---|---:|")
    opt_sets = {"plain": {}, "all": dict(label_smoothing=0.1, z_loss=1e-4, softcap=30.0, weight=True)}
    try:
        for n_rows, n in SHAPES:
            for dname, dtype in DTYPES.items():
                x = torch.empty((n_rows, n), dtype=dtype, device="meta")
                t = torch.empty(n_rows, dtype=torch.int64, device="meta")
                sc = torch.empty(2, dtype=torch.float32, device="meta")
                for oname, o in opt_sets.items():
                    w = torch.empty(n, dtype=torch.float32, device="meta") if o.get("weight") else None
                    kw = {k: v for k, v in o.items() if k != "weight"}
                    for grad in (None, "new", "inplace"):
                        hook.last = []
                        g = None if grad is None else (x if grad == "inplace" else torch.empty_like(x))
                        K.cross_entropy_forward(x, t, w, sc, grad=g, **kw)
                        if grad == "new":
                            K.scale_grad_(g, sc[0])
                            K.scale_grad_(g, torch.empty(n_rows, dtype=torch.float32, device="meta"))
                        for i in hook.last:
                            print(f"| {n_rows}x{n} | {dname} | {oname} | {grad} | {compile_cells(i)} |", flush=True)
    finally:
        K._LAUNCH_HOOK = None
    print(f"\n{len(hook.seen)} distinct variants compiled for sm_90")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--shapes", default="", help="comma-separated subset, e.g. 8192x128256")
    p.add_argument("--variants", action="store_true", help="options on the middle shape")
    p.add_argument("--sweep", action="store_true", help="twopass launcher settings")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow first compile)")
    p.add_argument("--json", default="", help="default $OUT/gpu_ce_bench.json")
    p.add_argument("--compile", action="store_true", help="compile for sm_90 offline and report resources")
    p.add_argument("--tmp", default="/tmp/twopass_ce_cubins", help="--compile: where cubins go")
    p.add_argument("--dry", action="store_true", help="TRITON_INTERPRET=1 on the CPU, tiny shapes")
    args = p.parse_args()
    if args.dry:
        os.environ["TRITON_INTERPRET"] = "1"
    K = load_triton_module("cross_entropy")
    if args.compile:
        compile_report(args, K)
        return
    if not args.dry and not torch.cuda.is_available():
        sys.exit("no CUDA device: use --compile or --dry")
    run(args, K)


if __name__ == "__main__":
    main()
