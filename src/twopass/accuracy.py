"""`python -m twopass accuracy`: the accuracy report.

For every op, dtype, algorithm and ISA (and torch, when installed, on the same inputs)
it prints the largest error against the extended-precision reference of
`twopass.reference`, over rows of several lengths and value distributions:
  - ulp: |y - ref| / ulp(ref), ulp in the output dtype (what "a few ULP" means);
    for log_softmax and logsumexp, ulp(max(1, |ref|)): log_softmax is near 0 at each
    row's maximum, and a logsumexp near 0 sums terms of opposite signs;
  - rel: |y - ref| / |ref| (softmax) or / max(1, |ref|) (log_softmax, logsumexp).
The normaliser of long rows is summed in blocks folded into double, so the error does
not grow with the row length; the 1M-element rows show it. Then the same over non-last
axes (columns computed side by side in vectors), and the float32 cross-entropy
and its gradient, against the same reference.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from . import ALGORITHMS, _dispatch, reference
from ._softmax import compute

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
    # log_softmax is near 0 at a row's maximum, and a logsumexp near 0 is m + log(s) with
    # m and log(s) of opposite signs, ill-conditioned (a short axis of values around 0
    # has such columns): count their errors in ulps of max(1, |y|).
    wide = op in ("log_softmax", "logsumexp")
    mag = np.maximum(1.0, np.abs(r)) if wide else np.abs(r)
    ulp = np.spacing(mag.astype(dtype)).astype(np.float64)
    # Relative error where it means something: outputs in the normal range.
    denom = np.maximum(1.0, np.abs(r)) if wide else np.abs(r)
    normal = denom >= np.finfo(dtype).tiny
    rel = err[normal] / denom[normal]
    return float(np.max(err / ulp)), float(np.max(rel, initial=0.0))


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@functools.cache  # one per (op, axis), not one per input
def _torch_fn(op: str, axis: int) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    f = {"softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp}[op]
    return lambda x: f(torch.from_numpy(x), axis).numpy()


def _implementations(op: str) -> list[str]:
    """ "isa/algorithm" for every ISA the CPU runs and every algorithm of op, and "torch"
    where it is installed."""
    algos = ("two_pass", "three_pass_recompute", "online") if op == "logsumexp" else ALGORITHMS
    labels = [f"{isa}/{algo}" for isa in _dispatch.isa_supported() for algo in algos]
    return labels + (["torch"] if _torch_available() else [])


def _worst_errors(inputs: list[tuple[str, np.ndarray, int]]) -> list[dict[str, Any]]:
    """Per dtype, op and implementation: the largest errors over `inputs` (a description,
    an array and the axis to reduce) and the input that gave the largest ulp error."""
    rows = []
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        for op in ("softmax", "log_softmax", "logsumexp"):
            cases = [(where, x.astype(dtype), axis) for where, x, axis in inputs]
            refs = [getattr(reference, op)(x, axis=axis) for _, x, axis in cases]
            for label in _implementations(op):
                worst_ulp, worst_rel, worst = 0.0, 0.0, ""
                for (where, x, axis), ref in zip(cases, refs):
                    if label == "torch":
                        y = _torch_fn(op, axis)(x)
                    else:
                        isa, algo = label.split("/")
                        y = compute(op, x, axis=axis, algorithm=algo, isa=isa)
                    u, r = _errors(op, np.asarray(y), np.asarray(ref), dtype)
                    if u > worst_ulp:
                        worst_ulp, worst = u, where
                    worst_rel = max(worst_rel, r)
                rows.append(
                    {
                        "dtype": dtype.name,
                        "op": op,
                        "impl": label,
                        "max_ulp": worst_ulp,
                        "max_rel": worst_rel,
                        "worst": worst,
                    }
                )
    return rows


def measure(lengths=LENGTHS, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of every length in `lengths` and every distribution of DISTRIBUTIONS."""
    rng = np.random.default_rng(seed)
    return _worst_errors([(f"{name}, n={n}", gen(rng, n), -1) for name, gen in DISTRIBUTIONS.items() for n in lengths])


# Non-last axes (a panel of columns per call): short and long axes, lane counts that
# leave partial vectors, an axis in the middle.
AXIS_CASES = (
    ((1, 1027), 0),
    ((2, 1027), 0),
    ((4, 1027), 0),
    ((16, 1027), 0),
    ((64, 1027), 0),
    ((300, 1027), 0),
    ((8, 37, 129), 1),
)


def measure_axes(seed: int = 0) -> list[dict[str, Any]]:
    """As `measure`, over a non-last axis (the panels of docs/design.md): every input of
    AXIS_CASES with the normal x 30, uniform and masked distributions."""
    rng = np.random.default_rng(seed)
    names = ("normal x 30", "uniform +-80", "masked -inf")
    return _worst_errors(
        [
            (f"{name}, {shape} axis {axis}", DISTRIBUTIONS[name](rng, int(np.prod(shape))).reshape(shape), axis)
            for name in names
            for shape, axis in AXIS_CASES
        ]
    )


CE_CASES = (
    ("normal x 3", 64, 32000, 3.0, 0.0),
    ("normal x 10", 16, 128256, 10.0, 0.0),
    ("large 3000", 64, 32000, 20.0, 3000.0),
)


def measure_cross_entropy(seed: int = 0) -> list[dict[str, Any]]:
    """float32 cross-entropy (reduction "none") and its gradient (for an upstream gradient
    of 1) against the extended-precision reference: loss in ulps of the loss, gradient in
    units of u times the row's largest gradient (its elements near 0 are differences)."""
    from . import cross_entropy

    rng = np.random.default_rng(seed)
    u = 2.0**-24
    cases = []
    for name, rows, n, scale, shift in CE_CASES:
        x = (rng.standard_normal((rows, n)) * scale + shift).astype(np.float32)
        t = rng.integers(0, n, rows)
        lse = reference.logsumexp(x)
        loss = lse - x[np.arange(rows), t].astype(np.float64)
        grad = reference.softmax(x)
        grad[np.arange(rows), t] -= 1
        cases.append((name, x, t, loss, grad))
    candidates: list[tuple[str, Callable[..., Any]]] = [
        (
            f"{isa}/{algo}",
            lambda x, t, a=algo, i=isa: cross_entropy(x, t, reduction="none", return_grad=True, algorithm=a, isa=i),
        )
        for isa in _dispatch.isa_supported()
        for algo in ("two_pass", "three_pass_reload")
    ]
    try:
        import torch

        def torch_ce(x, t):
            xt = torch.from_numpy(x).requires_grad_()
            loss = torch.nn.functional.cross_entropy(xt, torch.from_numpy(t), reduction="none")
            loss.sum().backward()
            return loss.detach().numpy(), xt.grad.numpy()

        candidates.append(("torch", torch_ce))
    except ImportError:
        pass
    rows_out = []
    for label, fn in candidates:
        worst_l, worst_g, where = 0.0, 0.0, ""
        for name, x, t, loss, grad in cases:
            lo, gr = fn(x, t)
            el = float(np.max(np.abs(np.asarray(lo, np.float64) - loss) / (np.abs(loss) * u)))
            scale = np.max(np.abs(grad), axis=1, keepdims=True)
            eg = float(np.max(np.abs(np.asarray(gr, np.float64) - grad) / (scale * u)))
            if el > worst_l:
                where = name
            worst_l, worst_g = max(worst_l, el), max(worst_g, eg)
        rows_out.append({"impl": label, "loss_ulp": worst_l, "grad_u": worst_g, "worst": where})
    return rows_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m twopass accuracy", description=__doc__.split("\n")[0])
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--quick", action="store_true", help="rows up to 64K only")
    args = p.parse_args(argv)
    rows = measure(LENGTHS[:2] if args.quick else LENGTHS)
    print(f"{'dtype':8} {'op':12} {'implementation':32} {'max ulp':>9} {'max rel':>10}  worst case")
    for r in rows:
        print(f"{r['dtype']:8} {r['op']:12} {r['impl']:32} {r['max_ulp']:9.2f} {r['max_rel']:10.2e}  {r['worst']}")
    axis_rows = measure_axes()
    print(f"\nover a non-last axis ({', '.join(f'{s} axis {a}' for s, a in AXIS_CASES)}):")
    for r in axis_rows:
        print(f"{r['dtype']:8} {r['op']:12} {r['impl']:32} {r['max_ulp']:9.2f} {r['max_rel']:10.2e}  {r['worst']}")
    ce_rows = measure_cross_entropy()
    print(f"\ncross-entropy, float32 ({', '.join(c[0] for c in CE_CASES)}):")
    print(f"{'implementation':32} {'loss ulp':>9} {'grad (u x row max)':>19}  worst loss case")
    for r in ce_rows:
        print(f"{r['impl']:32} {r['loss_ulp']:9.2f} {r['grad_u']:19.2f}  {r['worst']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"info": _dispatch.info(), "rows": rows, "axes": axis_rows, "cross_entropy": ce_rows}, f, indent=1
            )
    return 0
