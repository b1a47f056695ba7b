"""`python -m twopass bench --device cuda`: softmax, log_softmax and logsumexp (forward and
backward) of twopass.triton.softmax against torch, as fractions of the HBM floor.

The cases are SHAPES (QUICK_SHAPES with --quick, INTERPRET_SHAPES under TRITON_INTERPRET=1)
x OPS x dtypes. The device's copy bandwidth is measured in the same run (a device-to-device
copy of 1 GiB, bytes read plus bytes written); each result is GB/s and a fraction of the
floor for its shape: the least HBM traffic the op needs over that bandwidth. Traffic, a "row"
being the data one reduction reads (for backward: y and g), `traffic()` below:

    softmax, log_softmax   1R + 1W if a row fits in half of L2, else 2R + 1W
    logsumexp              1R (+ the small output)
    softmax/log_softmax backward: 2R + 1W (y and g read, dx written) if a row of y and g fits
                           in half of L2, else 4R + 1W
    logsumexp backward     1R + 1W (+ the small g and lse)

Times are medians of triton.testing.do_bench (L2 cleared before every timed call). Each case
is first checked against torch (`close`); a mismatch is reported and makes the command fail.
--sweep also times other launcher settings (SWEEP) on the shapes that take the split kernels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import _cuda, _report

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
    # Row lengths that are not multiples of 16: 1000 (rows on the 16-byte grid, no
    # divisibility Triton can see), 32001 and 50257 (rows start off the grid).
    ("16384x1000", (16384, 1000), -1, ""),
    ("512x32001", (512, 32001), -1, ""),
    ("256x50257", (256, 50257), -1, ""),
    ("4096x4096 dim0", (4096, 4096), 0, ""),  # strided reduced axis, C-contiguous
    ("(4096x4096)^T dim-1", (4096, 4096), -1, "t"),  # transposed: reduced axis strided
    ("(4096x4096)^T dim0", (4096, 4096), 0, "t"),  # transposed: reduced axis contiguous
]
QUICK = {"16384x1024", "1024x16384", "256x262144", "64x2^20", "1x2^26", "256x50257", "(4096x4096)^T dim-1"}
QUICK_SHAPES = [s for s in SHAPES if s[0] in QUICK]
INTERPRET_SHAPES = [("4x3000", (4, 3000), -1, ""), ("300x40 dim0", (300, 40), 0, ""), ("(50x70)^T", (50, 70), -1, "t")]
OPS = ("softmax", "log_softmax", "logsumexp", "softmax_bwd", "log_softmax_bwd", "logsumexp_bwd")
DTYPES = ("float32", "bfloat16")

# Launcher settings tried by --sweep on the split shapes (each merged over the defaults).
SWEEP = [
    {"l2_fraction": 0.125},
    {"l2_fraction": 0.4},
    {"chunk_min": 32768},
    {"chunk_min": 8192},
    {"split_tile_elems": 4096},
    {"split_tile_elems": 16384, "split_warps": 16},
    {"split_warps": 4, "split_tile_elems": 4096},
]


def shapes_from_sizes(sizes: list[tuple[int, ...]]) -> list[tuple[str, tuple[int, ...], int, str]]:
    """--sizes (rows N, batches RxN): C-contiguous, reduced along the last axis."""
    from ._plan import format_shape

    return [(format_shape(s), tuple(s), -1, "") for s in sizes]


def make_input(shape, layout: str, dtype, device: str, seed: int = 0):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    if layout == "t":
        return torch.randn(shape[::-1], generator=gen, device=device, dtype=torch.float32).to(dtype).t()
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


def traffic(op: str, shape, dim: int, esize: int, l2: int) -> int:
    """The least HBM bytes for op on this shape (the module docstring's table)."""
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


def make_calls(K, op: str, x, dim: int, cfg=None):
    """(twopass call, torch call) for op on x, with the backward's inputs prepared."""
    import torch

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


def reference(K, op: str, x, dim: int):
    """What the check compares with: torch's result, except for logsumexp_bwd, whose torch
    composite rounds x - lse to bfloat16 (errors of percents): there, float32 maths."""
    import torch

    tp, tt = make_calls(K, op, x, dim)
    if op != "logsumexp_bwd":
        return tp, tt
    lse = torch.logsumexp(x, dim)
    gl = torch.randn_like(lse)
    return (
        lambda: K._logsumexp_backward(gl, x, lse, dim),
        lambda: (gl.float().unsqueeze(dim) * torch.exp(x.float() - lse.float().unsqueeze(dim))).to(x.dtype),
    )


def close(a, b, dtype) -> bool:
    """Same NaN pattern, and ||a - b|| / ||b|| under 1e-5 (float32) or 1e-2 (bfloat16) over
    the finite elements: a check against torch (the tests check the error bounds)."""
    import torch

    a, b = a.double(), b.double()
    tol = 1e-2 if dtype != torch.float32 else 1e-5
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    fin = torch.isfinite(b)
    return bool(torch.linalg.vector_norm(a[fin] - b[fin]) <= tol * torch.linalg.vector_norm(b[fin]))


def run(
    dev: _cuda.Device,
    console: Any,
    argv: list[str],
    *,
    shapes: list[tuple[str, tuple[int, ...], int, str]],
    ops: list[str],
    dtypes: list[str],
    sweep: bool = False,
) -> dict[str, Any]:
    import torch

    K = _cuda.triton_module("")  # the package: every softmax-family launcher
    L = _cuda.triton_module("_launch")  # the launch trace and hook
    t_start = time.perf_counter()
    copy_gbs, read_gbs = _cuda.copy_bandwidth(dev)
    rows: list[dict[str, Any]] = []
    with _report.progress(console, len(shapes) * len(dtypes) * len(ops)) as advance:
        for label, shape, dim, layout in shapes:
            for dname in dtypes:
                dtype = getattr(torch, dname)
                x = make_input(shape, layout, dtype, dev.torch_device)
                for op in ops:
                    advance(f"{label} {dname} {op}")
                    L._TRACE = []
                    try:
                        ok = close(*(f() for f in reference(K, op, x, dim)), dtype)
                        kernels = sorted({k for k, _ in L._TRACE})
                    finally:
                        L._TRACE = None
                    nbytes = traffic(op, shape, dim, x.element_size(), dev.l2_bytes)
                    tp, tt = make_calls(K, op, x, dim)
                    ms_tp, ms_tt = _cuda.time_ms(dev, tp), _cuda.time_ms(dev, tt)
                    r: dict[str, Any] = {
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
                    if sweep and any(k.endswith("split") for k in kernels):
                        best = (ms_tp, {})
                        for cfg in SWEEP:
                            ms = _cuda.time_ms(dev, make_calls(K, op, x, dim, cfg)[0])
                            r.setdefault("sweep", []).append({"cfg": cfg, "ms": ms})
                            best = min(best, (ms, cfg), key=lambda b: b[0])
                        r["best_cfg"], r["best_frac"] = best[1], nbytes / best[0] / 1e6 / copy_gbs
                    rows.append(r)
                del x
                _cuda.release(dev)
    doc = _report.header("twopass-bench-cuda/1", argv, dev.machine())
    doc.update(
        copy_GBps=copy_gbs,
        read_GBps=read_gbs,
        definitions={
            "floor": "least HBM bytes of the op (module twopass.bench._softmax_cuda) / copy bandwidth",
            "frac": "GB/s of that traffic / copy GB/s (1 = at the floor)",
            "time": "median of triton.testing.do_bench (L2 cleared before each call)",
            "ok": "matches torch (relative 2-norm error under 1e-5 float32, 1e-2 bfloat16)",
        },
        results=rows,
        elapsed_s=time.perf_counter() - t_start,
    )
    return doc


def print_report(console: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    m = doc["machine"]
    console.rule(f"twopass bench --device cuda: {m['device']}, {doc['date']}")
    console.print(
        f"copy {doc['copy_GBps']:.0f} GB/s (read + write), read {doc['read_GBps']:.0f} GB/s, "
        f"L2 {m['l2_bytes'] / 2**20:.0f} MiB; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    )
    tab = Table(title="softmax, log_softmax, logsumexp (Triton): GB/s and % of the HBM floor")
    for c in ("shape", "dtype", "op", "twopass GB/s", "twopass %", "torch GB/s", "torch %", "kernel", "ok"):
        tab.add_column(c, justify="left" if c in ("shape", "dtype", "op", "kernel") else "right", overflow="fold")
    for r in doc["results"]:
        extra = f" (best {100 * r['best_frac']:.0f}% with {r['best_cfg']})" if "best_cfg" in r else ""
        tab.add_row(
            r["shape"],
            r["dtype"],
            r["op"],
            f"{r['twopass_GBps']:.0f}",
            f"{100 * r['twopass_frac']:.1f}{extra}",
            f"{r['torch_GBps']:.0f}",
            f"{100 * r['torch_frac']:.1f}",
            r["kernel"],
            "yes" if r["ok"] else "[red]NO[/red]",
        )
    console.print(tab)


def failures(doc: dict[str, Any]) -> list[str]:
    return [f"{r['shape']} {r['dtype']} {r['op']}" for r in doc["results"] if not r["ok"]]


# ----------------------------------------------------------------------------------
# --compile: what the benchmark would launch, built offline for sm_90 (no GPU needed).
# ----------------------------------------------------------------------------------
def compile_report(argv: list[str], ops: list[str], dtypes: list[str], tmp: Path) -> dict[str, Any]:
    import torch

    K = _cuda.triton_module("")  # the package: every softmax-family launcher
    L = _cuda.triton_module("_launch")  # the launch trace and hook
    hook = _cuda.compile_hook(tmp)
    L._LAUNCH_HOOK = hook
    rows = []
    try:
        for label, shape, dim, layout in SHAPES:
            for dname in dtypes:
                dtype = getattr(torch, dname)
                x = torch.empty(shape[::-1] if layout == "t" else shape, dtype=dtype, device="meta")
                x = x.t() if layout == "t" else x
                for op in ops:
                    hook.last = []
                    if op in ("softmax", "log_softmax"):
                        K._softmax_forward(x, dim, op == "log_softmax")
                    elif op == "logsumexp":
                        K._logsumexp_forward(x, dim)
                    elif op == "logsumexp_bwd":
                        lse = torch.empty(L._reduced_shape(x.shape, dim % 2, False), dtype=dtype, device="meta")
                        K._logsumexp_backward(lse, x, lse, dim)
                    else:
                        K._softmax_backward(torch.empty_like(x), torch.empty_like(x), dim, op == "log_softmax_bwd")
                    rows += [{"case": [label, dname, op], **i} for i in hook.last]
    finally:
        L._LAUNCH_HOOK = None
    doc = _report.header("twopass-bench-compile/1", argv, {"target": "sm_90"})
    doc.update(case_columns=["shape", "dtype", "op"], results=rows, variants=len(hook.seen))
    return doc
