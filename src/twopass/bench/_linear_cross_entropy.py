"""`python -m twopass bench --linear-cross-entropy`: the vocabulary head and its loss,
forward + backward, ``loss(h @ W.T, t)`` with h (N, H) and W (V, H) both requiring grad.

Variants:
- twopass: `twopass.torch.linear_cross_entropy` (chunked over tokens, gradients in the
  forward, the fused CE kernel in place on each chunk);
- torch: ``F.cross_entropy(F.linear(h, W), t)`` (the whole logits and their gradient);
- torch_chunked: ``F.linear_cross_entropy(h, W, t, options=nn.LinearCrossEntropyOptions())``
  (torch's own chunked form, its default options);
- torch_compile: torch.compile of the unfused form (inductor);
- on CUDA also liger (Liger-Kernel's LigerFusedLinearCrossEntropyLoss) and cce (Cut
  Cross-Entropy's linear_cross_entropy), when installed.

Memory: each variant in a fresh subprocess, its inputs allocated first, one warm-up step
on a small shape (imports, thread pools; torch_compile warms up on the full shape, its
kernels being built for it), then one full step whose peak extra memory is measured
(CPU: the peak resident size minus the resident size before it, VmHWM reset through
/proc/self/clear_refs, since torch's CPU allocator is not traced; CUDA:
torch.cuda.max_memory_allocated minus the allocated bytes before). The extra memory
includes the gradients of h and W (the same for all).

Time: in this process, the same inputs, one warm-up step per variant, then `repeats`
rounds in which every variant takes one step in turn (round-robin, so that a change in
the machine's load falls on all of them alike); median and minimum per variant.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from . import _report

SHAPES = ((8192, 1024, 32000),)  # (N, H, V): the shape of issue 17
QUICK_SHAPES = ((2048, 1024, 32000),)
CUDA_SHAPES = ((8192, 4096, 128256),)
DTYPES = ("float32", "bfloat16")
CUDA_DTYPES = ("bfloat16",)
VARIANTS = ("twopass", "torch", "torch_chunked", "torch_compile")
CUDA_VARIANTS = (*VARIANTS, "liger", "cce")


_SNIPPET = r"""
import json, sys, time
sys.path[:0] = {path!r}
import torch
torch.set_num_threads({threads})
from twopass.bench._linear_cross_entropy import _inputs, _step, Unavailable
dev = {device!r}
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
try:
    small = _inputs((64, {shape[1]}, 512), {dtype!r}, dev)
    h, w, t = _inputs({shape!r}, {dtype!r}, dev)
    if {variant!r} == "torch_compile":
        fn = _step({variant!r}, h, w, t)
        fn()
    else:
        _step({variant!r}, *small)()
        fn = _step({variant!r}, h, w, t)
except Unavailable as e:
    print(json.dumps({{"unavailable": str(e)}}))
    sys.exit(0)
del small
if dev == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(); torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
else:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) from here: the inputs exist already
    before = status("VmRSS:")
    fn()
    peak = status("VmHWM:") - before
ts = [0.0]
for _ in range({repeats}):
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter(); fn()
    if dev == "cuda":
        torch.cuda.synchronize()
    ts.append(time.perf_counter() - t0)
ts.sort()
print(json.dumps({{"peak_extra_bytes": peak, "median_s": ts[len(ts) // 2], "times_s": ts}}))
"""


class Unavailable(Exception):
    """A variant that cannot run here (why: the message)."""


def _inputs(shape, dtype: str, device: str = "cpu", seed: int = 0):
    """h (N, H), W (V, H) leaves requiring grad, at the scale of a trained head (logits
    of a few units), and targets in [0, V)."""
    import torch

    n, hdim, v = shape
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    h = torch.randn(n, hdim, generator=g).to(device=device, dtype=dt).requires_grad_()
    w = (torch.randn(v, hdim, generator=g) / hdim**0.5).to(device=device, dtype=dt).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g).to(device)
    return h, w, t


def _step(variant: str, h, w, t):
    """One forward + backward as a closure (the gradients dropped after it)."""
    import torch
    import torch.nn.functional as F

    if variant == "twopass":
        import twopass.torch as tpt

        loss_fn = tpt.linear_cross_entropy
    elif variant == "torch":

        def loss_fn(h, w, t):
            return F.cross_entropy(F.linear(h, w), t)
    elif variant == "torch_chunked":
        opts = torch.nn.LinearCrossEntropyOptions()

        def loss_fn(h, w, t):
            return F.linear_cross_entropy(h, w, t, options=opts)
    elif variant == "torch_compile":
        compiled = torch.compile(lambda h, w, t: F.cross_entropy(F.linear(h, w), t))

        def loss_fn(h, w, t):
            try:
                return compiled(h, w, t)
            except Exception as e:  # noqa: BLE001 - inductor needs a working C++ toolchain
                raise Unavailable(f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}") from e
    elif variant == "liger":
        if h.device.type != "cuda":
            raise Unavailable("Liger-Kernel runs on CUDA only")
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError as e:
            raise Unavailable(f"Liger-Kernel not installed ({e})") from e
        liger = LigerFusedLinearCrossEntropyLoss()

        def loss_fn(h, w, t):
            return liger(w, h, t)
    elif variant == "cce":
        if h.device.type != "cuda":
            raise Unavailable("Cut Cross-Entropy runs on CUDA only")
        try:
            from cut_cross_entropy import linear_cross_entropy as cce
        except ImportError as e:
            raise Unavailable(f"cut-cross-entropy not installed ({e})") from e

        def loss_fn(h, w, t):
            return cce(h, w, t)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(CUDA_VARIANTS)}")

    def run():
        loss_fn(h, w, t).backward()
        h.grad = w.grad = None

    return run


def measure(variant: str, shape, dtype: str, threads: int, repeats: int, device: str = "cpu") -> dict[str, Any]:
    """{peak_extra_bytes, median_s, times_s} or {unavailable}, from a fresh subprocess;
    RuntimeError with its error output when it fails."""
    code = _SNIPPET.format(
        path=sys.path, threads=threads, shape=tuple(shape), dtype=dtype, variant=variant, repeats=repeats, device=device
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"exit {out.returncode}: {out.stderr.strip()[-300:]}")
    return json.loads(lines[-1])


def _time_round_robin(results: dict[str, Any], shape, dtype: str, threads: int, repeats: int, device: str) -> None:
    """Adds median_s, min_s and times_s to each available variant's entry of `results`."""
    import torch

    torch.set_num_threads(threads)
    h, w, t = _inputs(shape, dtype, device)
    steps = {}
    for v, r in results.items():
        if r is not None:
            steps[v] = _step(v, h, w, t)
            steps[v]()  # warm-up (torch_compile: its build)

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(repeats):
        for v, fn in steps.items():
            times[v].append(timed(fn))
    for v, ts in times.items():
        ts = sorted(ts)
        results[v].update(median_s=ts[len(ts) // 2], min_s=ts[0], times_s=ts)


def run(
    console: Any,
    argv: list[str],
    *,
    shapes: list[tuple[int, int, int]],
    dtypes: list[str],
    threads: list[int],
    repeats: int,
    device: str = "cpu",
    torch_compile: bool = True,
) -> dict[str, Any]:
    import twopass

    variants = [v for v in (CUDA_VARIANTS if device == "cuda" else VARIANTS) if torch_compile or v != "torch_compile"]
    rows = []
    notes: list[str] = []
    t_start = time.perf_counter()
    with _report.progress(console, len(threads) * len(shapes) * len(dtypes) * len(variants)) as advance:
        for th in threads:
            for shape in shapes:
                for dtype in dtypes:
                    row = {"threads": th, "shape": list(shape), "dtype": dtype, "variants": {}}
                    for v in variants:
                        advance(f"{th}t {'x'.join(map(str, shape))} {dtype} {v}")
                        try:
                            r = measure(v, shape, dtype, th, 0, device)
                        except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
                            r = {"unavailable": f"failed: {e}"}
                        if "unavailable" in r:
                            if f"{v}: {r['unavailable']}" not in notes:
                                notes.append(f"{v}: {r['unavailable']}")
                            r = None
                        row["variants"][v] = r and {"peak_extra_bytes": r["peak_extra_bytes"]}
                    _time_round_robin(row["variants"], shape, dtype, th, repeats, device)
                    rows.append(row)
    doc = _report.header("twopass-bench-lce/1", argv, twopass.info())
    doc.update(
        device=device,
        definitions={
            "step": "forward + backward of the mean cross-entropy of h @ W.T, h (N, H) and W (V, H) requiring grad",
            "median_s": f"median of {repeats} steps, the variants taking turns in one process (min_s: the fastest)",
            "peak_extra_bytes": "peak memory during one step minus before it (CPU: resident size; CUDA: allocated)",
        },
        results=rows,
        notes=notes,
        elapsed_s=time.perf_counter() - t_start,
    )
    return doc


def print_report(console: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    variants = CUDA_VARIANTS if doc.get("device") == "cuda" else VARIANTS
    tab = Table(title=f"linear + cross-entropy, forward + backward ({doc.get('device', 'cpu').upper()})")
    for c in ("threads", "N x H x V", "dtype", *(f"{v} s / MB" for v in variants), "twopass / torch_chunked"):
        tab.add_column(c, justify="right")
    for r in doc["results"]:
        v = r["variants"]

        def cell(k, v=v):
            e = v.get(k)
            if not e:
                return "n/a"
            return f"{e['median_s']:.3g} ({e['min_s']:.3g}) / {e['peak_extra_bytes'] / 2**20:.0f}"

        tp, tc = v.get("twopass"), v.get("torch_chunked")
        ratio = "n/a"
        if tp and tc:
            mem = tp["peak_extra_bytes"] / tc["peak_extra_bytes"]
            ratio = f"time {tp['median_s'] / tc['median_s']:.2f}x ({tp['min_s'] / tc['min_s']:.2f}x), memory {mem:.2f}x"
        tab.add_row(str(r["threads"]), "x".join(map(str, r["shape"])), r["dtype"], *(cell(k) for k in variants), ratio)
    console.print(tab)
    console.print(
        "s = median seconds per step (fastest in brackets), variants in turn; MB = peak extra memory of one "
        "step (MiB, fresh process), gradients included"
    )
    for n in doc.get("notes", []):
        console.print(f"note: {n}")
