"""Smoke test of an installed twopass (no pytest, no torch): softmax, log_softmax, logsumexp
and cross_entropy against a float64 NumPy computation, once per instruction set this CPU
and build support (each in a subprocess with TWOPASS_ISA set), then twopass.info().

    python .ci/smoke.py          # exits non-zero on any mismatch
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import twopass

# dtype -> (epsilon of the computation, epsilon of the output, absolute floor for underflow):
# float16 and bfloat16 are computed in float32 and rounded once at the end.
EPS = {
    "float64": (2.2e-16, 2.2e-16, 1e-300),
    "float32": (1.2e-7, 1.2e-7, 1e-37),
    "float16": (1.2e-7, 9.8e-4, 1e-7),
    "bfloat16": (1.2e-7, 7.9e-3, 1e-37),
}


def ref_log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def ref_logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)), axis=axis)


def close(name: str, got: np.ndarray, want: np.ndarray, dtype: str, spread: float, log: bool) -> None:
    """|got - want| within a few rounding errors. The exponential's argument reduction
    loses about |x| ulps: `spread` (the largest |x|) scales the bound, relative to each
    value for probabilities, added to it for logarithms."""
    ceps, oeps, tiny = EPS[dtype]
    got = np.asarray(got)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    assert str(got.dtype) == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    g = got.astype(np.float64)
    assert np.all(np.isfinite(g)), f"{name}: non-finite output"
    a = np.abs(want)
    if log:
        bound = tiny + oeps * a + 16 * ceps * (a + 1 + spread)
    else:
        bound = tiny + a * (oeps + 16 * ceps * (1 + spread))
    err = np.abs(g - want)
    worst = np.argmax(err - bound)
    assert np.all(err <= bound), (
        f"{name}: error {err.flat[worst]:.3g} over the bound {bound.flat[worst]:.3g} at {want.flat[worst]:.6g}"
    )


def arrays(rng: np.random.Generator) -> list[tuple[str, np.ndarray, int]]:
    big = rng.standard_normal((4, 4099)) * 30 + 1000  # far from 0: overflows a naive exp
    return [
        ("2d", rng.standard_normal((3, 1000)) * 4, -1),
        ("big", big, -1),
        ("3d-axis1", rng.standard_normal((5, 67, 9)), 1),
        ("1d-odd", rng.standard_normal(33), 0),
    ]


def check(isa: str) -> int:
    import ml_dtypes

    rng = np.random.default_rng(0)
    dtypes = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
    n = 0
    for label, x64, axis in arrays(rng):
        for dname, dt in dtypes.items():
            if dname in ("float16", "bfloat16") and label == "big":
                continue  # 1000 +- 30 in 8 or 11 bits of mantissa: the input itself is the error
            x = x64.astype(dt)
            xr = x.astype(np.float64)  # the reference sees the rounded input
            want_ls = ref_log_softmax(xr, axis)
            s = float(np.abs(xr).max())
            for algo in ("auto", *twopass.ALGORITHMS):
                sm, lsm = twopass.softmax(x, axis, algorithm=algo), twopass.log_softmax(x, axis, algorithm=algo)
                close(f"{isa} softmax {label} {algo}", sm, np.exp(want_ls), dname, s, False)
                close(f"{isa} log_softmax {label} {algo}", lsm, want_ls, dname, s, True)
                n += 2
            lse = ref_logsumexp(xr, axis)
            close(f"{isa} logsumexp {label}", twopass.logsumexp(x, axis), lse, dname, s, True)
            close(
                f"{isa} logsumexp keepdims {label}",
                twopass.logsumexp(x, axis, keepdims=True),
                np.expand_dims(lse, axis),
                dname,
                s,
                True,
            )
            n += 2
            # out= in place
            y = x.copy()
            twopass.softmax(y, axis, out=y)
            close(f"{isa} softmax in place {label}", y, np.exp(want_ls), dname, s, False)
            n += 1

    # cross-entropy: logits (N, C), class indices, one ignored row; mean, sum, none; gradient
    for dname in ("float64", "float32"):
        logits = (rng.standard_normal((37, 1031)) * 3).astype(dname)
        target = rng.integers(0, 1031, size=37)
        target[5] = -100
        ls = ref_log_softmax(logits.astype(np.float64), -1)
        s = float(np.abs(logits).max())
        keep = target != -100
        rows = np.where(keep, -ls[np.arange(37), np.where(keep, target, 0)], 0.0)
        close(
            f"{isa} cross_entropy none {dname}",
            twopass.cross_entropy(logits, target, reduction="none"),
            rows,
            dname,
            s,
            True,
        )
        close(
            f"{isa} cross_entropy sum {dname}",
            twopass.cross_entropy(logits, target, reduction="sum"),
            np.asarray(rows.sum()),
            dname,
            s * 37,
            True,
        )
        loss, grad = twopass.cross_entropy(logits, target, return_grad=True)
        close(f"{isa} cross_entropy mean {dname}", loss, np.asarray(rows.sum() / keep.sum()), dname, s, True)
        g = np.exp(ls)
        g[np.arange(37), np.where(keep, target, 0)] -= 1.0
        g[~keep] = 0.0
        close(f"{isa} cross_entropy grad {dname}", grad, g / keep.sum(), dname, s, False)
        n += 4
    return n


def main() -> None:
    forced = os.environ.get("TWOPASS_ISA")
    if forced:  # a child: one instruction set
        print(f"  {forced}: {check(forced)} checks passed", flush=True)
        return
    info = twopass.info()
    where = os.path.dirname(twopass.__file__)
    print(f"twopass {twopass.__version__} from {where}", flush=True)
    assert "site-packages" in where, "smoke-test an installed twopass, not the checkout"
    for isa in info["isa_supported"]:
        env = dict(os.environ, TWOPASS_ISA=isa)
        subprocess.run([sys.executable, __file__], env=env, check=True)
    print(json.dumps(info, indent=1, default=str))
    assert info["isa"] in info["isa_supported"], info


if __name__ == "__main__":
    main()
