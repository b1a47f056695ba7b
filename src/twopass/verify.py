"""python -m twopass verify --device cuda [--out DIR]: everything about the GPU kernels that
needs a GPU to be known, in one command (3.5 minutes on an H200, 2026-12-04), written to
DIR/verify.json and DIR/verify.md.

Checks (correctness; any failure makes the exit status 1):
  tests      the Triton tests (tests/test_*_triton.py of a source checkout) and twopass.torch's
             (test_softmax_torch.py, test_logsumexp_torch.py) on the device; DIR/tests.log
  stress     bitwise repeats with the smallest chunks and a lag of one row, so that phase-1
             programs really wait for phase-0 programs still running; against torch too
  graphs     softmax, logsumexp and the fused cross-entropy captured in a CUDA graph and
             replayed on new inputs
  compile    torch.compile(fullgraph=True) of twopass.torch's functions, forward and backward
  large      a row of more than 2^31 elements (bfloat16: about 8.6 GB of device memory)
Bars (performance; printed as met or not, from the benchmark run in the same command, with
the copy bandwidth measured in the same run):
  softmax, log_softmax: >= 90% of the shape's HBM floor for rows up to 256K, 85% beyond;
  logsumexp >= 90% of one read; backward >= 85%; never slower than torch;
  cross-entropy forward + backward >= 80% of one read + one write, >= 1.3x faster than
  Liger-Kernel on 8192x128256 bfloat16.

With TRITON_INTERPRET=1 and no GPU the same command runs the Triton kernels on tiny CPU
tensors (a smoke test of the command itself, run in CI): the tests are a small subset, the
GPU-only checks (graphs, compile, large) are reported as skipped and no bar is evaluated.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROW_LIMIT = 256 * 1024  # softmax bars: 90% of the floor up to this row length, 85% beyond


def _check(name: str, fn: Callable[[], tuple[bool | None, str]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        ok, detail = fn()
    except Exception as e:  # a crash is a failed check, reported with its message
        ok, detail = False, f"{type(e).__name__}: {e}"
    row = {"check": name, "ok": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 1)}
    # As it goes, so that a run cut short (a lease, a timeout) still tells what it found.
    res = "skipped" if ok is None else "pass" if ok else "FAIL"
    print(f"[verify] {name}: {res} ({row['seconds']} s) {detail}", flush=True)
    return row


def _tests(interpret: bool, out: Path) -> tuple[bool | None, str]:
    root = Path.cwd() / "tests"
    names = ["test_softmax_triton.py", "test_logsumexp_triton.py", "test_cross_entropy_triton.py"]
    if not interpret:  # twopass.torch on CUDA tensors too (its eager path and custom ops)
        names += ["test_softmax_torch.py", "test_logsumexp_torch.py"]
    files = [str(root / f) for f in names]
    if not all(Path(f).exists() for f in files):
        return None, "no tests/ here: run the command from a source checkout"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-rf", "--tb=short", *files]
    if interpret:  # CI runs these files in full already: here the command's own smoke test
        cmd += ["-k", "unaligned or aligned_grid or copy_one_pass"]
    elif importlib.util.find_spec("xdist") is not None:  # kernel compiles dominate: one per core
        cmd += ["-n", str(min(16, os.cpu_count() or 1))]
    r = subprocess.run(cmd, capture_output=True, text=True)
    (out / "tests.log").write_text(r.stdout + r.stderr)  # the failures in full
    lines = r.stdout.strip().splitlines() or ["(no output)"]
    failed = [ln for ln in lines if ln.startswith("FAILED ")]
    return r.returncode == 0, "; ".join(failed[:5] + [lines[-1]])


def _stress(torch: Any, dev: str, interpret: bool) -> tuple[bool | None, str]:
    from .triton import cross_entropy as CE
    from .triton import logsumexp as LSE
    from .triton import softmax as SM

    # The smallest work items and a lag of one row: every phase-1 item waits on phase-0
    # items of the same row, taken just before it by other programs.
    tiny = dict(split_tile_elems=256, split_warps=1, chunk_min=256, chunk_max=256, k_max=512, l2_bytes=4096)
    ce_tiny = dict(tile_elems=256, warps=1, chunk_min=256, chunk_max=256, k_max=512, l2_bytes=4096, split=True)
    shape = (6, 3001) if interpret else (64, 200_003)
    repeats = 2 if interpret else 50
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=dev) * 4
    t = torch.randint(0, shape[1], (shape[0],), generator=gen, device=dev)
    sc = torch.tensor([1.0 / shape[0], 0.0], device=dev)
    runs = {
        "softmax": lambda: SM._softmax_forward(x, -1, cfg=tiny),
        "softmax_bwd": lambda: SM._softmax_backward(x, x.softmax(-1), -1, cfg=tiny),
        "logsumexp": lambda: LSE._logsumexp_forward(x, -1, cfg=tiny),
        "cross_entropy": lambda: CE.cross_entropy_forward(x, t, None, sc, grad=torch.empty_like(x), cfg=ce_tiny)[0],
    }
    refs = {
        "softmax": lambda: torch.softmax(x.double(), -1),
        "softmax_bwd": None,
        "logsumexp": lambda: torch.logsumexp(x.double(), -1),
        "cross_entropy": lambda: torch.nn.functional.cross_entropy(x.double(), t, reduction="none"),
    }
    bad = []
    for name, fn in runs.items():
        first = fn().clone()
        for _ in range(repeats):
            if not torch.equal(fn(), first):
                bad.append(f"{name}: not bitwise repeatable")
                break
        if refs[name] is not None:
            want = refs[name]()
            err = ((first.double() - want).abs().max() / want.abs().max()).item()
            if not err < 1e-5:
                bad.append(f"{name}: relative error {err:.1e} against float64")
    done = f"{len(runs)} kernels x {repeats + 1} runs on {shape}, chunks of 256: bitwise equal"
    return not bad, "; ".join(bad) or done


def _graphs(torch: Any) -> tuple[bool | None, str]:
    import twopass.torch as tt

    x = torch.randn(512, 50257, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, 50257, (512,), device="cuda")
    fns = {
        "softmax": lambda: tt.softmax(x, -1),
        "logsumexp": lambda: tt.logsumexp(x, -1),
        "cross_entropy": lambda: tt.cross_entropy(x, t),
    }
    bad = []
    for name, fn in fns.items():
        fn()  # compile and warm up outside the capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
        x.copy_(torch.randn_like(x))  # new inputs, the same buffers
        g.replay()
        torch.cuda.synchronize()
        if not torch.equal(out, fn()):
            bad.append(f"{name}: replay differs from an eager call")
    done = "softmax, logsumexp, cross_entropy: captured, replayed on new inputs, equal to eager"
    return not bad, "; ".join(bad) or done


def _compile(torch: Any) -> tuple[bool | None, str]:
    import twopass.torch as tt

    x = torch.randn(256, 32001, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, 32001, (256,), device="cuda")

    def step(x):
        return tt.softmax(x, -1).square().sum() + tt.logsumexp(x, -1).sum() + tt.cross_entropy(x, t)

    eager = step(x)
    (ge,) = torch.autograd.grad(eager, x)
    comp = torch.compile(step, fullgraph=True)(x)
    (gc,) = torch.autograd.grad(comp, x)
    ok = torch.allclose(comp.float(), eager.float(), rtol=1e-2) and torch.allclose(gc.float(), ge.float(), atol=1e-3)
    return ok, "softmax + logsumexp + cross_entropy, forward and backward, fullgraph: " + ("equal" if ok else "DIFFER")


def _large(torch: Any) -> tuple[bool | None, str]:
    from .triton import logsumexp as LSE
    from .triton import softmax as SM

    n = (1 << 31) + 17
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * 2 * n + (1 << 30):
        return None, f"needs {3 * 2 * n / 2**30:.1f} GiB free, {free / 2**30:.1f} GiB are"
    x = torch.empty((1, n), device="cuda", dtype=torch.bfloat16)
    x.uniform_(-8, 8)
    x[0, -1] = 40.0  # the maximum in the last element: a 32-bit index would never reach it
    lse = LSE._logsumexp_forward(x, -1).float().item()
    parts = torch.tensor([torch.logsumexp(c.float(), -1).item() for c in x[0].split(1 << 28)], dtype=torch.float64)
    want = torch.logsumexp(parts, 0).item()
    y = SM._softmax_forward(x, -1)
    last = y[0, -1].float().item()
    want_last = float(torch.exp(torch.tensor(40.0, dtype=torch.float64) - want))
    ok = abs(lse - want) < 1e-2 and abs(last - want_last) <= 1e-2 * want_last
    return ok, f"n = 2^31 + 17 bf16: lse {lse:.4f} (float64 of chunks {want:.4f}); y[-1] {last:.3e} ({want_last:.3e})"


def _bench(out: Path, interpret: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the quick GPU sweeps (softmax family, cross-entropy) into out/; their documents."""
    docs, notes = [], []
    for mode in (["--device", "cuda"], ["--cross-entropy", "--device", "cuda"]):
        before = set(out.glob("*.json"))
        cmd = [sys.executable, "-m", "twopass", "bench", *mode, "--quick", "--out", str(out)]
        if not interpret:
            cmd += ["--dtypes", "float32,bfloat16"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        print(r.stdout, flush=True)  # the benchmark's own tables, into the log as it goes
        new = sorted(set(out.glob("*.json")) - before)
        if r.returncode != 0:  # a mismatch against torch, or a crash
            notes.append(f"bench {' '.join(mode)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}")
        if new:
            docs.append(json.loads(new[-1].read_text()))
    return docs, notes


def bars(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each GPU bar of the benchmark's results as met or not."""
    rows = []
    for doc in docs:
        if doc.get("schema", "").startswith("twopass-bench-cuda"):
            for r in doc["results"]:
                n = r["dims"][r["dim"]]
                op = r["op"]
                if op == "logsumexp":
                    frac, need = r["bytes"] / r["twopass_ms"] / 1e6 / doc["read_GBps"], 0.90
                    what = "of one read"
                elif op.endswith("_bwd"):
                    frac, need, what = r["twopass_frac"], 0.85, "of the floor"
                else:
                    frac, need, what = r["twopass_frac"], 0.90 if n <= ROW_LIMIT else 0.85, "of the floor"
                case = f"{r['shape']} {r['dtype']} {op}"
                rows.append({"case": case, "bar": f">= {need:.0%} {what}", "value": frac, "met": frac >= need})
                speed = r["torch_ms"] / r["twopass_ms"]
                rows.append({"case": case, "bar": "not slower than torch", "value": speed, "met": speed >= 1.0})
        elif doc.get("schema", "").startswith("twopass-bench-ce-cuda"):
            res = [r for r in doc["results"] if r.get("options") in ("plain", None)]
            for r in res:
                if r["method"] != "twopass":
                    continue
                case = f"CE {r['shape'][0]}x{r['shape'][1]} {r['dtype']}"
                rows.append(
                    {
                        "case": case,
                        "bar": ">= 80% of one read + one write",
                        "value": r["frac_bound"],
                        "met": r["frac_bound"] >= 0.80,
                    }
                )
                same = [q for q in res if q["shape"] == r["shape"] and q["dtype"] == r["dtype"]]
                liger = [q for q in same if q["method"] == "liger"]
                if liger and list(r["shape"]) == [8192, 128256] and r["dtype"] == "bfloat16":
                    sp = liger[0]["ms"] / r["ms"]
                    rows.append({"case": case, "bar": ">= 1.3x faster than Liger", "value": sp, "met": sp >= 1.3})
    return rows


def _markdown(doc: dict[str, Any]) -> str:
    lines = [f"# twopass verify --device cuda: {doc['device']}, {doc['date']}", "", "## Checks", ""]
    lines += ["| check | result | detail | s |", "|---|---|---|---:|"]
    for c in doc["checks"]:
        res = "skipped" if c["ok"] is None else ("pass" if c["ok"] else "**FAIL**")
        lines.append(f"| {c['check']} | {res} | {c['detail']} | {c['seconds']} |")
    lines += ["", "## Bars", ""]
    if not doc["bars"]:
        lines.append("(none evaluated: " + ("interpreter run" if doc["interpret"] else "no benchmark results") + ")")
    else:
        lines += ["| case | bar | value | met |", "|---|---|---:|---|"]
        for b in doc["bars"]:
            v = f"{b['value']:.0%}" if "%" in b["bar"] else f"{b['value']:.2f}x"
            lines.append(f"| {b['case']} | {b['bar']} | {v} | {'yes' if b['met'] else '**no**'} |")
        met = sum(b["met"] for b in doc["bars"])
        lines += ["", f"{met} of {len(doc['bars'])} bars met."]
    lines += [""] + [f"- note: {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m twopass verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", required=True, choices=["cuda"], help="the device to verify (cuda)")
    p.add_argument("--out", default="verify_results", help="directory for verify.json, verify.md and the bench JSON")
    p.add_argument("--no-bench", action="store_true", help="the checks only, no benchmark and no bars")
    args = p.parse_args(argv)
    try:
        import torch
        import triton  # noqa: F401
    except ImportError as e:
        print(f"verify --device cuda needs torch and triton: {e}", file=sys.stderr)
        return 2
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if not interpret and not torch.cuda.is_available():
        print("verify --device cuda: no CUDA device (TRITON_INTERPRET=1: a smoke run on the CPU)", file=sys.stderr)
        return 2
    dev = "cpu" if interpret else "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu_only = (None, "needs a GPU (interpreter run)")
    checks = [
        _check("tests", lambda: _tests(interpret, out)),
        _check("stress", lambda: _stress(torch, dev, interpret)),
        _check("graphs", (lambda: gpu_only) if interpret else (lambda: _graphs(torch))),
        _check("compile", (lambda: gpu_only) if interpret else (lambda: _compile(torch))),
        _check("large", (lambda: gpu_only) if interpret else (lambda: _large(torch))),
    ]
    docs, notes = ([], ["--no-bench"]) if args.no_bench else _bench(out, interpret)
    doc = {
        "schema": "twopass-verify/1",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "device": "Triton interpreter (CPU)" if interpret else torch.cuda.get_device_name(0),
        "interpret": interpret,
        "checks": checks,
        "bars": [] if interpret else bars(docs),
        "bench_files": [d.get("date") for d in docs],
        "notes": notes,
    }
    (out / "verify.json").write_text(json.dumps(doc, indent=1))
    md = _markdown(doc)
    (out / "verify.md").write_text(md)
    print(md)
    bench_failed = any(n.startswith("bench ") for n in notes)
    return 0 if all(c["ok"] is not False for c in checks) and not bench_failed else 1
