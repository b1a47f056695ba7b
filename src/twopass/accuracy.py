"""`python -m twopass accuracy`: the accuracy report.

For every op, dtype, algorithm and ISA (and torch, when installed, on the same inputs)
it prints the largest error against the extended-precision reference of
`twopass.reference`, over rows of several lengths and value distributions:
  - ulp: |y - ref| / ulp(ref), ulp in the output dtype (what "a few ULP" means);
    for log_softmax, ulp(max(1, |ref|)), since it is near 0 at each row's maximum;
  - rel: |y - ref| / |ref| (softmax, logsumexp) or / max(1, |ref|) (log_softmax).
The normaliser of long rows is summed in blocks folded into double, so the error does
not grow with the row length; the 1M-element rows show it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from . import ALGORITHMS, _dispatch, reference
from ._api import compute

LENGTHS = (1000, 65536, 1 << 20)
DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "normal x 30": lambda rng, n: rng.standard_normal(n) * 30,
    "uniform +-80": lambda rng, n: rng.uniform(-80, 80, n),
    "masked -inf": lambda rng, n: np.where(rng.random(n) < 0.5, -np.inf, rng.standard_normal(n) * 5),
    "large 3000": lambda rng, n: 3000 + rng.standard_normal(n) * 20,
}


def _errors(op: str, y: np.ndarray, ref: np.ndarray, dtype: np.dtype) -> tuple[float, float]:
    ok = np.isfinite(ref)
    if not ok.any():
        return 0.0, 0.0
    y64, r = y.astype(np.float64)[ok], ref[ok]
    err = np.abs(y64 - r)
    # log_softmax is near 0 at a row's maximum: count its error in ulps of max(1, |y|).
    mag = np.maximum(1.0, np.abs(r)) if op == "log_softmax" else np.abs(r)
    ulp = np.spacing(mag.astype(dtype)).astype(np.float64)
    # Relative error where it means something: outputs in the normal range.
    denom = np.maximum(1.0, np.abs(r)) if op == "log_softmax" else np.abs(r)
    normal = denom >= np.finfo(dtype).tiny
    rel = err[normal] / denom[normal]
    return float(np.max(err / ulp)), float(np.max(rel, initial=0.0))


def _torch_fn(op: str) -> Callable[[np.ndarray], np.ndarray] | None:
    try:
        import torch
    except ImportError:
        return None
    f = {"softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp}[op]
    return lambda x: f(torch.from_numpy(x), -1).numpy()


def measure(lengths=LENGTHS, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    inputs = [(name, n, gen(rng, n)) for name, gen in DISTRIBUTIONS.items() for n in lengths]
    rows = []
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        for op in ("softmax", "log_softmax", "logsumexp"):
            xs = [(name, n, x.astype(dtype)) for name, n, x in inputs]
            refs = [reference.logsumexp(x) if op == "logsumexp" else getattr(reference, op)(x) for _, _, x in xs]
            candidates: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = []
            algos = ("two_pass", "three_pass_recompute", "online") if op == "logsumexp" else ALGORITHMS
            for isa in _dispatch.isa_supported():
                for algo in algos:
                    candidates.append(
                        (f"{isa}/{algo}", lambda x, a=algo, i=isa, o=op: compute(o, x, algorithm=a, isa=i))
                    )
            torch_fn = _torch_fn(op)
            if torch_fn is not None:
                candidates.append(("torch", torch_fn))
            for label, fn in candidates:
                worst_ulp, worst_rel, where = 0.0, 0.0, ""
                for (name, n, x), ref in zip(xs, refs):
                    u, r = _errors(op, np.asarray(fn(x)), np.asarray(ref), dtype)
                    if u > worst_ulp:
                        worst_ulp, where = u, f"{name}, n={n}"
                    worst_rel = max(worst_rel, r)
                rows.append(
                    {
                        "dtype": dtype.name,
                        "op": op,
                        "impl": label,
                        "max_ulp": worst_ulp,
                        "max_rel": worst_rel,
                        "worst": where,
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m twopass accuracy", description=__doc__.split("\n")[0])
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--quick", action="store_true", help="rows up to 64K only")
    args = p.parse_args(argv)
    rows = measure(LENGTHS[:2] if args.quick else LENGTHS)
    print(f"{'dtype':8} {'op':12} {'implementation':32} {'max ulp':>9} {'max rel':>10}  worst case")
    for r in rows:
        print(f"{r['dtype']:8} {r['op']:12} {r['impl']:32} {r['max_ulp']:9.2f} {r['max_rel']:10.2e}  {r['worst']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": _dispatch.info(), "rows": rows}, f, indent=1)
    return 0
