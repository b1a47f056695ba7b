"""Two builds of twopass's kernels, timed against each other in one process.

A change to a kernel is measured by calling the same ``_core.run`` through the old and
the new extension module, alternating call by call, so both see the same machine load
(these machines are shared). Each build is a ``pip install --target`` folder:

    git worktree add /tmp/wt_old HEAD~1
    (cd /tmp/wt_old && pip install --no-build-isolation --no-deps --target /tmp/ab_old .)
    pip install --no-build-isolation --no-deps --target /tmp/ab_new .
    python tools/ab_builds.py /tmp/ab_old /tmp/ab_new --dtypes float32 bfloat16

Prints, per case, nanoseconds per element for each build (a low percentile of the
repeats: the least disturbed calls), one thread, output preallocated, in cache (the
same buffers every call). Shapes are written as in tools/torch_cpu_vs_torch.py:
``4x4x16384@1`` is axis 1 of that shape.
"""

from __future__ import annotations

import argparse
import glob
import importlib.machinery
import importlib.util
import time

import ml_dtypes
import numpy as np

from twopass._arrays import layout, out_layout
from twopass._dispatch import ALGO_CODES, DTYPE_CODES, ISA, ISA_CODES, OP_CODES

PANELS = ["4x4x16384@1", "16x16384@0", "16x16x1024@1", "2x64x2048@1"]
CASES = [("softmax", "three_pass_reload"), ("log_softmax", "three_pass_reload"), ("logsumexp", "two_pass")]


def load_core(folder: str, tag: str):
    """The _core extension of the install in `folder`, under a module name of its own."""
    (path,) = glob.glob(f"{folder}/twopass/_core*.so")
    name = f"{tag}._core"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def parse_shape(text: str) -> tuple[tuple[int, ...], int]:
    dims, _, axis = text.partition("@")
    shape = tuple(int(d) for d in dims.split("x"))
    return shape, int(axis) if axis else len(shape) - 1


def run_args(op: str, algo: str, isa: str, x: np.ndarray, axis: int):
    """The positional arguments of _core.run for op over `axis` of a C-contiguous x,
    laid out by the same helpers the public API uses."""
    reduced = op == "logsumexp"
    y = np.empty(x.shape[:axis] + x.shape[axis + 1 :] if reduced else x.shape, x.dtype)
    outer, n, inner, xs_outer, xs_n = layout(x, axis)
    ys_outer, ys_n = out_layout(y, axis, op, keepdims=False)
    half = x.dtype.itemsize == 2
    code = DTYPE_CODES[x.dtype.name] if half else -1
    xv, yv = (x.view(np.uint16), y.view(np.uint16)) if half else (x, y)
    dims = (outer, n, inner, xs_outer, xs_n, ys_outer, ys_n)
    return (OP_CODES[op], ALGO_CODES[algo], ISA_CODES[isa], xv, yv, *dims, 1, False, code)


def time_builds(cores, args, repeats: int, percentile: float, size: int) -> list[float]:
    times = [[] for _ in cores]
    for _ in range(repeats):
        for t, core in zip(times, cores):
            t0 = time.perf_counter()
            core.run(*args)
            t.append(time.perf_counter() - t0)
    return [float(np.percentile(t, percentile)) * 1e9 / size for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", help="pip --target folders, one per build")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--shapes", nargs="+", default=PANELS, help="e.g. 4x4x16384@1 (default: four panels)")
    parser.add_argument("--cases", nargs="+", default=[f"{op}:{algo}" for op, algo in CASES], help="op:algorithm")
    parser.add_argument("--isa", default=ISA)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--percentile", type=float, default=10.0)
    args = parser.parse_args()
    cores = [load_core(folder, f"build{i}") for i, folder in enumerate(args.builds)]
    rng = np.random.default_rng(0)
    print(f"ns per element, one thread, isa {args.isa}; builds: " + " / ".join(args.builds))
    for dtype in args.dtypes:
        for text in args.shapes:
            shape, axis = parse_shape(text)
            x = rng.standard_normal(shape).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype))
            for case in args.cases:
                op, algo = case.split(":")
                ns = time_builds(cores, run_args(op, algo, args.isa, x, axis), args.repeats, args.percentile, x.size)
                print(f"{dtype:9} {text:16} {op:12} {algo:18} " + " / ".join(f"{v:.3f}" for v in ns))


if __name__ == "__main__":
    main()
