"""`python -m twopass bench --cross-entropy --device cuda`: twopass.triton.cross_entropy
(forward + backward) against its peers, as fractions of the HBM floor.

What is timed: one training step's loss and logits gradient, mean reduction, from logits
that need no gradient graph of their own (`METHODS`):

    twopass          scale on the device, cross_entropy_forward(..., grad=new buffer), the loss
                     sum, scale_grad_ by a device 1.0 (returns at once): what twopass.torch does
    twopass-inplace  the same with grad written over the logits
    torch            F.cross_entropy(x, t) + backward (eager)
    torch.compile    the same, compiled (default mode; --no-torch-compile leaves it out)
    liger            Liger-Kernel's cross entropy + backward, if liger_kernel is importable

The cases are SHAPES (QUICK_SHAPES with --quick, INTERPRET_SHAPES under TRITON_INTERPRET=1)
x dtypes, plain; --variants adds VARIANTS (smoothing, z-loss, soft-cap, class weights, ignored
rows) on the middle shape. The floor is one read and one write of the logits (2 N C E bytes)
at the device-to-device copy bandwidth measured in the same run. Each row: median time
(triton.testing.do_bench, L2 flushed before each call), GB/s of that traffic, fraction of the
floor, peak memory one step allocates beyond its inputs. Every method is checked against
torch in float32 (a mismatch fails the command); twopass also for bitwise determinism and
under CUDA-graph capture. --sweep adds twopass with other launcher settings (SWEEP).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from . import _cuda, _report

# 50257 (GPT-2's vocabulary) is odd: its rows start off the 16-byte grid.
SHAPES = [(8192, 32000), (8192, 50257), (8192, 128256), (4096, 256000)]
QUICK_SHAPES = [(8192, 128256), (8192, 50257)]
INTERPRET_SHAPES = [(6, 300), (3, 1000)]
DTYPES = ("bfloat16", "float32")
METHODS = ("twopass", "twopass-inplace", "torch", "torch.compile", "liger")
VARIANTS = {
    "smooth0.1": {"label_smoothing": 0.1},
    "zloss1e-4": {"z_loss": 1e-4},
    "softcap30": {"softcap": 30.0},
    "weight": {"weight": True},
    "ignore25%": {"ignore": 0.25},
}
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
# Under the interpreter: tiles small enough for the tiny shapes to take every code path.
INTERPRET_CFG = {"tile_elems": 64, "cw": 16, "warps": 1, "chunk_min": 64, "k_max": 8, "l2_bytes": 8192, "num_sms": 2}


def load_liger() -> Any:
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except ImportError:
        return None
    return liger_cross_entropy


def make_inputs(n_rows: int, n: int, dtype, dev: str, opts: dict[str, Any], seed: int = 0):
    import torch

    gen = torch.Generator(device=dev).manual_seed(seed)
    x = (torch.randn((n_rows, n), generator=gen, device=dev, dtype=torch.float32) * 2).to(dtype)
    t = torch.randint(0, n, (n_rows,), generator=gen, device=dev)
    if opts.get("ignore"):
        t[torch.rand(n_rows, generator=gen, device=dev) < opts["ignore"]] = -100
    w = torch.rand(n, generator=gen, device=dev) + 0.5 if opts.get("weight") else None
    return x, t, w


def twopass_step(K, x, t, w, opts: dict[str, Any], inplace: bool = False, cfg=None):
    """Loss and gradient as the autograd wrapper computes them, mean reduction, g = 1."""
    import torch

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


def torch_loss(x, t, w, opts: dict[str, Any]):
    """docs/cross_entropy.md with torch ops (the z-loss and soft-cap composed)."""
    import torch
    import torch.nn.functional as F

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


def torch_step(x, t, w, opts: dict[str, Any], fn=torch_loss):
    xg = x.detach().requires_grad_()
    loss = fn(xg, t, w, opts)
    loss.backward()
    return loss, xg.grad


def liger_step(liger, x, t, w, opts: dict[str, Any]):
    import torch

    xg = x.detach().requires_grad_()  # Liger writes the gradient over the logits
    loss = liger(
        xg, t, weight=w, label_smoothing=opts.get("label_smoothing", 0.0),
        lse_square_scale=opts.get("z_loss", 0.0), softcap=opts.get("softcap"),
    )  # fmt: skip
    if not isinstance(loss, torch.Tensor):  # versions that return (loss, z) or an output record
        loss = loss.loss if hasattr(loss, "loss") else loss[0]
    loss.backward()
    return loss, xg.grad


def close(a_loss, a_grad, b_loss, b_grad, dtype) -> bool:
    """Loss within 1e-4 (float32) or 1e-2 (relative; a bf16 peer may reduce in bf16), and
    ||grad - ref|| / ||ref|| under 1e-5 (float32) or 1e-2."""
    import torch

    tol = 1e-5 if dtype == torch.float32 else 1e-2
    la, lb = float(a_loss), float(b_loss)
    ok_loss = abs(la - lb) <= (1e-4 if dtype == torch.float32 else 1e-2) * max(1.0, abs(lb))
    ga, gb = a_grad.double(), b_grad.double()
    ok_grad = bool(torch.linalg.vector_norm(ga - gb) <= tol * torch.linalg.vector_norm(gb))
    return ok_loss and ok_grad


def graph_check(K, x, t, w, opts: dict[str, Any], dev: _cuda.Device) -> bool | None:
    """The step captured in a CUDA graph (no host sync may happen inside) gives the eager
    result; None under the interpreter (no graphs there)."""
    if dev.interpret:
        return None
    import torch

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


def run(
    dev: _cuda.Device,
    console: Any,
    argv: list[str],
    *,
    shapes: list[tuple[int, int]],
    dtypes: list[str],
    variants: bool = False,
    sweep: bool = False,
    torch_compile: bool = True,
) -> dict[str, Any]:
    import torch

    K = _cuda.triton_module("cross_entropy")
    t_start = time.perf_counter()
    copy_gbs = _cuda.copy_bandwidth(dev)[0]
    liger = None if dev.interpret else load_liger()
    compiled = torch.compile(torch_loss) if torch_compile and not dev.interpret else None
    cfg0 = INTERPRET_CFG if dev.interpret else None
    cases = [((n_rows, n), dname, "plain", {}) for n_rows, n in shapes for dname in dtypes]
    if variants:
        middle = shapes[min(1, len(shapes) - 1)]
        cases += [(middle, dname, v, o) for dname in dtypes for v, o in VARIANTS.items()]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if liger is None and not dev.interpret:
        notes.append("liger: liger_kernel is not importable")
    with _report.progress(console, len(cases)) as advance:
        for (n_rows, n), dname, vname, opts in cases:
            advance(f"{n_rows}x{n} {dname} {vname}")
            dtype = getattr(torch, dname)
            x, t, w = make_inputs(n_rows, n, dtype, dev.torch_device, opts)
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
            if sweep:
                for i, c in enumerate(SWEEP):
                    methods[f"twopass cfg{i} {c}"] = lambda xi, t=t, w=w, o=opts, c=c: twopass_step(
                        K, xi, t, w, o, cfg=c
                    )
            a = twopass_step(K, x, t, w, opts, cfg=cfg0)
            b = twopass_step(K, x, t, w, opts, cfg=cfg0)
            checks = {
                "deterministic": bool(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])),
                "cuda_graph": graph_check(K, x, t, w, opts, dev),
            }
            del a, b
            for mname, step in methods.items():
                xi = x.clone() if mname in INPLACE else x
                try:
                    loss, grad = step(xi.clone() if mname in INPLACE else xi)
                except Exception as e:  # a peer without this option: reported, not timed
                    if mname.startswith("twopass"):
                        raise
                    notes.append(f"{n_rows}x{n} {dname} {vname} {mname} failed: {type(e).__name__}: {e}")
                    continue
                ok = close(loss, grad, ref_loss, ref_grad, dtype)
                del loss, grad
                mib = _cuda.peak_mib(dev, lambda s=step, xi=xi: s(xi))
                ms = _cuda.time_ms(dev, lambda s=step, xi=xi: s(xi), rep_ms=200)
                del xi
                rows.append(
                    {
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
                        **(checks if mname == "twopass" else {}),
                    }
                )
            del x, t, w, ref_grad
            _cuda.release(dev)
    machine = dev.machine()
    machine["versions"]["liger"] = getattr(sys.modules.get("liger_kernel"), "__version__", None) if liger else None
    doc = _report.header("twopass-bench-ce-cuda/1", argv, machine)
    doc.update(
        copy_GBps=copy_gbs,
        definitions={
            "step": "loss + logits gradient, mean reduction (module twopass.bench._cross_entropy_cuda)",
            "floor": "one read + one write of the logits at the copy bandwidth of the same run",
            "frac_bound": "GB/s of that traffic / copy GB/s (1 = at the floor)",
            "peak_MiB": "memory one step allocates beyond its inputs",
        },
        results=rows,
        notes=notes,
        elapsed_s=time.perf_counter() - t_start,
    )
    return doc


def print_report(console: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    m = doc["machine"]
    console.rule(f"twopass bench --cross-entropy --device cuda: {m['device']}, {doc['date']}")
    console.print(
        f"copy {doc['copy_GBps']:.0f} GB/s (read + write); "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    )
    tab = Table(title="cross-entropy forward + backward (Triton): time, GB/s (1R + 1W), % of the HBM floor")
    for c in ("shape", "dtype", "options", "method", "ms", "GB/s", "% floor", "peak MiB", "ok"):
        tab.add_column(c, justify="left" if c in ("shape", "dtype", "options", "method", "ok") else "right")
    for r in doc["results"]:
        flags = "yes" if r["ok"] else "[red]NO[/red]"
        if r["method"] == "twopass":
            flags += ", det " + ("yes" if r["deterministic"] else "[red]NO[/red]")
            if r["cuda_graph"] is not None:
                flags += ", graph " + ("yes" if r["cuda_graph"] else "[red]NO[/red]")
        mib = "-" if r["peak_MiB"] is None else f"{r['peak_MiB']:.0f}"
        tab.add_row(
            "x".join(map(str, r["shape"])),
            r["dtype"],
            r["options"],
            r["method"],
            f"{r['ms']:.3f}",
            f"{r['GBps']:.0f}",
            f"{100 * r['frac_bound']:.1f}",
            mib,
            flags,
        )
    console.print(tab)
    for n in doc["notes"]:
        console.print(f"note: {n}")


def failures(doc: dict[str, Any]) -> list[str]:
    bad = []
    for r in doc["results"]:
        what = f"{'x'.join(map(str, r['shape']))} {r['dtype']} {r['options']} {r['method']}"
        if not r["ok"]:
            bad.append(what)
        if r["method"] == "twopass" and (not r["deterministic"] or r["cuda_graph"] is False):
            bad.append(what + " (determinism / CUDA graph)")
    return bad


# ----------------------------------------------------------------------------------
# --compile: every kernel variant, built offline for sm_90 (no GPU needed).
# ----------------------------------------------------------------------------------
def compile_report(argv: list[str], dtypes: list[str], tmp) -> dict[str, Any]:
    import torch

    K = _cuda.triton_module("cross_entropy")
    L = _cuda.triton_module("_launch")  # the launch hook
    hook = _cuda.compile_hook(tmp, hidden_consts=("P1", "P2"))
    L._LAUNCH_HOOK = hook
    opt_sets = {"plain": {}, "all": {"label_smoothing": 0.1, "z_loss": 1e-4, "softcap": 30.0, "weight": True}}
    rows = []
    try:
        for n_rows, n in SHAPES:
            for dname in dtypes:
                dtype = getattr(torch, dname)
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
                        rows += [{"case": [f"{n_rows}x{n}", dname, oname, str(grad)], **i} for i in hook.last]
    finally:
        L._LAUNCH_HOOK = None
    doc = _report.header("twopass-bench-compile/1", argv, {"target": "sm_90"})
    doc.update(case_columns=["shape", "dtype", "options", "grad"], results=rows, variants=len(hook.seen))
    return doc
