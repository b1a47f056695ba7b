"""Where the time of a twopass.triton call goes on a GPU: the device's work alone (the call
captured in a CUDA graph and replayed) against the eager call (launcher + Triton launch +
kernels), and the host's cost per call (calls enqueued back to back, no sync), for twopass
and torch on the same tensors.

    python tools/gpu_overhead.py [--out FILE.json]

Columns: tp = twopass.triton's launcher, tpt = twopass.torch (what users call: autograd
and the dispatcher on top), th = torch. Times are medians of triton.testing.do_bench (L2
flushed before each call) in microseconds;
host us/call is the mean of 200 enqueued calls after a warm-up (the GPU queue is deep
enough for them not to wait on the device when the kernels are short). Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from triton.testing import do_bench

import twopass.torch as tt
import twopass.triton as K

CASES = [
    ((16384, 1024), -1, False),
    ((1024, 16384), -1, False),
    ((256, 50257), -1, False),
    ((256, 262144), -1, False),
    ((1, 1 << 26), -1, False),
    ((4096, 4096), -1, True),  # transposed: reduced axis strided
]
OPS = {  # (twopass.triton launcher, twopass.torch (what users call), torch)
    "softmax": (
        lambda x, d: K._softmax_forward(x, d),
        lambda x, d: tt.softmax(x, d),
        lambda x, d: torch.softmax(x, d),
    ),
    "logsumexp": (
        lambda x, d: K._logsumexp_forward(x, d),
        lambda x, d: tt.logsumexp(x, d),
        lambda x, d: torch.logsumexp(x, d),
    ),
}


def host_us(fn, calls: int = 200) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def graph_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return do_bench(g.replay, warmup=25, rep=100, return_mode="median") * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    args = p.parse_args()
    rows = []
    print(f"{'case':28} {'op':10} {'dtype':9} | {'tp eager':>8} {'tp graph':>8} {'tp host':>8} | "
          f"{'tpt eagr':>8} {'tpt host':>8} | {'th eager':>8} {'th graph':>8} {'th host':>8}  (us)")  # fmt: skip
    for shape, dim, transposed in CASES:
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(shape[::-1] if transposed else shape, device="cuda", dtype=dt)
            if transposed:
                x = x.t()
            for op, (tp, tpt, th) in OPS.items():
                r = {"shape": list(shape), "transposed": transposed, "op": op, "dtype": str(dt)[6:]}
                for who, f in (("twopass", tp), ("twopass.torch", tpt), ("torch", th)):
                    fn = lambda f=f, x=x, d=dim: f(x, d)  # noqa: E731
                    r[who] = {
                        "eager_us": do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3,
                        "host_us": host_us(fn),
                    }
                    try:
                        r[who]["graph_us"] = graph_us(fn)
                    except Exception as e:  # a call that cannot be captured: say so, go on
                        r[who]["graph_us"] = float("nan")
                        print(f"{who} {op}: no graph: {type(e).__name__}: {e}")
                rows.append(r)
                a, c, b = r["twopass"], r["twopass.torch"], r["torch"]
                name = "x".join(map(str, shape)) + ("^T" if transposed else "")
                cols = [a["eager_us"], a["graph_us"], a["host_us"], c["eager_us"], c["host_us"]]
                cols += [b["eager_us"], b["graph_us"], b["host_us"]]
                v = [f"{c:8.1f}" for c in cols]
                print(f"{name:28} {op:10} {r['dtype']:9} | {' '.join(v[:3])} | {' '.join(v[3:5])} | {' '.join(v[5:])}")
            del x
            print(end="", flush=True)
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
