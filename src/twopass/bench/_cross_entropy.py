"""`python -m twopass bench --cross-entropy` (--device cpu, the default): the fused loss
against torch, on the CPU. (On CUDA: _cross_entropy_cuda.)

The cases are SHAPES (QUICK_SHAPES with --quick; --sizes RxC) x DTYPES x VARIANTS x thread
counts. For each shape and dtype, forward + backward of the mean cross-entropy (the training
step's loss), medians of repeats after a warm-up, in one process:
- twopass: `twopass.torch.cross_entropy` (gradient computed in the forward, streamed),
  and with `inplace_backward=True` (the gradient over the logits);
- torch eager: `torch.nn.functional.cross_entropy`; torch.compile of the same (inductor;
  reported as unavailable, with the error, when it fails to build); Liger-Kernel needs a
  CUDA device: n/a here;
- the bound (memory floor): one read and one write of the logits at the streaming-copy
  bandwidth, measured in the same run over buffers of the same size;
- the compute floor: the in-place step per row on rows that stay in the L2 (k rows in
  one call, less the per-call cost of a call on one row of 16 classes; one thread,
  fastest of the repeats), times the rows that are not ignored over the threads.
  "% of roof" = max(the two floors) / time.
Peak extra memory per variant (beyond the inputs) is measured in a fresh subprocess
from the process's peak resident size (Linux: VmHWM, reset through
/proc/self/clear_refs), since torch's CPU allocator is not traced; where that fails,
the note says why. twopass's output cache is off there (TWOPASS_OUTPUT_CACHE_MB=0): it
keeps the last gradient's pages between steps, which a step's peak would not show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

from . import _plan, _report

SHAPES = ((2048, 32000), (1024, 128256))
QUICK_SHAPES = ((2048, 32000),)
DTYPES = ("float32", "bfloat16")
VARIANTS = ("twopass", "twopass_inplace", "torch", "torch_compile", "liger")
MEMORY_VARIANTS = ("twopass", "twopass_inplace", "torch")  # (compile's first call builds the kernels)
IGNORE_INDEX = -100


def _inputs(shape, dtype: str, seed: int = 0, ignored: bool = True):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).mul_(3).to(getattr(torch, dtype))
    t = torch.randint(0, shape[1], (shape[0],), generator=g)
    if ignored:
        t[::7] = IGNORE_INDEX  # some ignored rows, as in a batch with padding
    return x, t


class Unavailable(Exception):
    """A peer that cannot run here (why: the message); reported in the table's notes."""


def _step(variant: str, x, t) -> Callable[[], Any]:
    """One forward + backward, as a closure; Unavailable when the variant cannot run here."""
    import torch
    import torch.nn.functional as F

    if variant == "twopass":
        import twopass.torch as tpt

        leaf = x.clone().requires_grad_()

        def run():
            tpt.cross_entropy(leaf, t).backward()
            leaf.grad = None

        return run
    if variant == "twopass_inplace":
        return _inplace_step(x, t)
    if variant == "torch":
        leaf = x.clone().requires_grad_()

        def run():
            F.cross_entropy(leaf, t).backward()
            leaf.grad = None

        return run
    if variant == "torch_compile":
        leaf = x.clone().requires_grad_()
        fn = torch.compile(lambda a, b: F.cross_entropy(a, b))
        try:
            fn(leaf, t).backward()
        except Exception as e:  # noqa: BLE001 - inductor needs a working C++ toolchain
            raise Unavailable(f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}") from e

        def run():
            fn(leaf, t).backward()
            leaf.grad = None

        return run
    if variant == "liger":
        raise Unavailable("Liger-Kernel runs on CUDA only (--device cuda)")
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def _inplace_step(x, t) -> Callable[[], Any]:
    """forward + backward with the gradient written over the logits. In-place needs
    non-leaf logits (a model's output); making them by a copy would time the copy, so a
    Function hands one buffer back as its own non-leaf output, reused by every call (its
    values become gradients, which are valid logits too)."""
    import torch

    import twopass.torch as tpt

    class Output(torch.autograd.Function):
        @staticmethod
        def forward(ctx, buf, dummy):
            ctx.mark_dirty(buf)
            return buf

        @staticmethod
        def backward(ctx, g):
            return None, None  # the model's backward would start here

    dummy = torch.zeros(1, requires_grad=True)
    buf = x.clone()

    def run():
        tpt.cross_entropy(Output.apply(buf.detach(), dummy), t, inplace_backward=True).backward()

    return run


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _fastest_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def _row_compute_s(n: int, dtype: str, repeats: int) -> float:
    """The in-place forward + backward's arithmetic per row of n classes, one thread:
    the fastest call on k rows that stay in the L2 together (at least one), less the
    fastest call on one row of 16 classes (the per-call cost: autograd, the loss), over k.
    Fastest, not median: noise only adds to a floor. Measured once per row length and
    dtype, before any run on several threads (their OpenMP workers, spinning after a
    call, moved the medians by up to 2x).

    (A difference of k rows and one row cancels the per-call cost too, but where a row
    is half the L2 k is 2 and that difference of two noisy medians came out 0: 1024 x
    128256 float32 on a 1 MiB L2.)"""
    import torch

    from twopass import _dispatch

    k = max(1, _dispatch.cache_sizes()["L2"] // (n * _plan.ITEMSIZE[dtype]))
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_rows, t_call = (
            _fastest_s(_inplace_step(*_inputs(s, dtype, ignored=False)), 3 * repeats) for s in ((k, n), (1, 16))
        )
    finally:
        torch.set_num_threads(saved)
    return max(t_rows - t_call, 0.0) / k


def _copy_bound_s(nbytes: int, threads: int, repeats: int) -> float:
    """Streaming copy of a buffer of `nbytes` (one read + one write), as in the sweep."""
    from twopass import _core, _dispatch

    n = nbytes // 4
    a = np.ones(n, np.float32)
    b = np.empty_like(a)
    isa = _dispatch.isa_code(None)
    return _median_s(lambda: _core.copy_pass(a, b, isa, threads, True), repeats)


_MEM_SNIPPET = """
import os, sys, torch
sys.path[:0] = {path!r}
os.environ["TWOPASS_NUM_THREADS"] = "{threads}"
# (the output cache off: it would hold the first call's gradient, and the step would then
# show no extra memory while the process keeps it between steps)
os.environ["TWOPASS_OUTPUT_CACHE_MB"] = "0"
from twopass.bench._cross_entropy import _inputs, _step
torch.set_num_threads({threads})
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
x, t = _inputs({shape!r}, {dtype!r})
fn = _step({variant!r}, x, t)
fn()  # imports, thread pools, compiled code: not the step's memory
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS:")  # the inputs and the leaf's copy of the logits exist already
fn()
print(status("VmHWM:") - before)
"""


def _peak_extra_bytes(variant: str, shape, dtype: str, threads: int) -> float:
    """Raises RuntimeError with the subprocess's error when it fails."""
    code = _MEM_SNIPPET.format(path=sys.path, threads=threads, shape=tuple(shape), dtype=dtype, variant=variant)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"exit {out.returncode}: {out.stderr.strip()[-300:]}")
    return float(lines[-1])


def run(
    console: Any,
    argv: list[str],
    *,
    shapes: list[tuple[int, int]],
    dtypes: list[str],
    threads: list[int],
    repeats: int,
    torch_compile: bool = True,
) -> dict[str, Any]:
    import torch

    import twopass

    variants = [v for v in VARIANTS if torch_compile or v != "torch_compile"]
    rows = []
    notes: list[str] = []
    t_start = time.perf_counter()
    # (before the thread loop: see _row_compute_s)
    row_compute = {(n, dt): _row_compute_s(n, dt, repeats) for n in {s[1] for s in shapes} for dt in dtypes}
    with _report.progress(console, len(threads) * len(shapes) * len(dtypes) * len(variants)) as advance:
        for th in threads:
            torch.set_num_threads(th)
            os.environ["TWOPASS_NUM_THREADS"] = str(th)
            twopass._dispatch.default_threads.cache_clear()
            for shape in shapes:
                for dtype in dtypes:
                    x, t = _inputs(shape, dtype)
                    logit_bytes = x.numel() * x.element_size()
                    bound = _copy_bound_s(logit_bytes, th, repeats)
                    # the compute floor: the rows that are not ignored, over the threads
                    active = int((t != IGNORE_INDEX).sum())
                    compute = row_compute[shape[1], dtype] * active / min(th, shape[0])
                    roof = max(bound, compute)
                    row = {
                        "threads": th,
                        "shape": list(shape),
                        "dtype": dtype,
                        "bound_s": bound,
                        "compute_floor_s": compute,
                        "variants": {},
                    }
                    for v in variants:
                        advance(f"{th}t {shape[0]}x{shape[1]} {dtype} {v}")
                        try:
                            fn = _step(v, x, t)
                        except Unavailable as e:
                            row["variants"][v] = None
                            if f"{v}: {e}" not in notes:
                                notes.append(f"{v}: {e}")
                            continue
                        s = _median_s(fn, repeats)
                        mem = None
                        if th == threads[-1] and v in MEMORY_VARIANTS:
                            try:
                                mem = _peak_extra_bytes(v, shape, dtype, th)
                            except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
                                notes.append(f"peak memory of {v} {shape[0]}x{shape[1]} {dtype} not measured: {e}")
                        row["variants"][v] = {
                            "median_s": s,
                            "of_bound": bound / s,
                            "of_roof": roof / s,
                            "peak_extra_bytes": mem,
                        }
                    rows.append(row)
                    del x, t
    doc = _report.header("twopass-bench-ce/1", argv, twopass.info())
    doc.update(
        definitions={
            "step": "forward + backward of the mean cross-entropy, 1/7 of the rows ignored",
            "bound": "one read + one write of the logits at the streaming-copy bandwidth of the same run",
            "of_bound": "bound time / measured time (1 = at the bound)",
            "compute_floor_s": (
                "the in-place step's fastest time per row on rows in the L2 (1 thread) x rows not ignored / threads"
            ),
            "of_roof": "max(bound, compute floor) / measured time",
            "peak_extra_bytes": "peak resident size during one step minus before it, fresh process",
        },
        results=rows,
        notes=notes,
        elapsed_s=time.perf_counter() - t_start,
    )
    return doc


def print_report(console: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    tab = Table(title="cross-entropy, forward + backward (CPU)")
    cols = ("threads", "shape", "dtype", "bound ms", "compute ms", *VARIANTS, "inplace % of roof", "twopass vs torch")
    for c in (*cols, "extra memory MB"):
        tab.add_column(c, justify="right")
    for r in doc["results"]:
        v = r["variants"]

        def cell(k, v=v):
            e = v.get(k)
            return "n/a" if not e else f"{e['median_s'] * 1e3:.1f} ms ({e['of_bound']:.0%})"

        tp, to, ti = v.get("twopass"), v.get("torch"), v.get("twopass_inplace")
        ratio = f"{to['median_s'] / tp['median_s']:.1f}x" if tp and to else "n/a"
        mem = " / ".join(
            "-" if not v.get(k) or v[k].get("peak_extra_bytes") is None else f"{v[k]['peak_extra_bytes'] / 2**20:.0f}"
            for k in ("twopass", "twopass_inplace", "torch")
        )
        tab.add_row(
            str(r["threads"]),
            "x".join(map(str, r["shape"])),
            r["dtype"],
            f"{r['bound_s'] * 1e3:.1f}",
            "-" if "compute_floor_s" not in r else f"{r['compute_floor_s'] * 1e3:.1f}",
            *(cell(k) for k in VARIANTS),
            "-" if not ti or "of_roof" not in ti else f"{ti['of_roof']:.0%}",
            ratio,
            mem,
        )
    console.print(tab)
    console.print(
        "extra memory: twopass / twopass_inplace / torch eager; (%) = share of the one-read-one-write bound; "
        "compute = the in-place step's arithmetic (rows in the L2, 1 thread, scaled); "
        "% of roof = max(bound, compute) / the in-place time"
    )
    for n in doc.get("notes", []):
        console.print(f"note: {n}")
