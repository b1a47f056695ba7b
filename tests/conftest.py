"""Shared test helpers: the ISAs to cover, error bounds, and the comparison itself."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import twopass
from twopass import _dispatch, reference

ALL_ISAS = ("scalar", "avx2", "avx512")
SUPPORTED = _dispatch.isa_supported()
# Every ISA is a test parameter: the ones this CPU lacks show up as skipped, not missing.
ISA_PARAMS = [
    pytest.param(isa, marks=pytest.mark.skipif(isa not in SUPPORTED, reason=f"CPU lacks {isa}")) for isa in ALL_ISAS
]
OPS = ("softmax", "log_softmax", "logsumexp")

# Error bounds, in units of the output dtype's unit roundoff u (2^-24 for float32,
# 2^-53 for float64), with the conditioning term every float implementation pays:
#   softmax:      |y - ref| <= (A + |x_i - lse|) * u * |ref|     (x_i - max is rounded)
#   log_softmax:  |y - ref| <= A * (|ref| + 1) * u   (x_i - max is exact near the max)
#   logsumexp:    |y - ref| <= A * u * (|ref| + 1)
# A below is what every algorithm and ISA meets on every input of the tests (float64's
# exp polynomial is 2.7 u, float32's 1.6 u: hence the larger float64 constants).
BOUND_A = {
    ("softmax", "float32"): 16.0,
    ("log_softmax", "float32"): 8.0,
    ("logsumexp", "float32"): 8.0,
    ("softmax", "float64"): 32.0,
    ("log_softmax", "float64"): 16.0,
    ("logsumexp", "float64"): 16.0,
}


def unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def reference_of(op: str, x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    if op == "logsumexp":
        return reference.logsumexp(x, axis=axis, keepdims=keepdims)
    return getattr(reference, op)(x, axis=axis)


def assert_close(op: str, x: np.ndarray, y: np.ndarray, axis: int = -1, keepdims: bool = False, out_dtype=None):
    """Check y against the extended-precision reference within the bounds above.
    out_dtype: the dtype the result was rounded to, when y was widened for the check
    (float16/bfloat16 results: the bound is their rounding plus float32's)."""
    x64 = np.asarray(x, dtype=np.float64)
    ref = reference_of(op, x64, axis, keepdims)
    y64 = np.asarray(y, dtype=np.float64)
    assert y64.shape == ref.shape
    # Special values must match exactly (NaN where NaN, inf where inf).
    np.testing.assert_array_equal(np.isnan(y64), np.isnan(ref), err_msg=f"{op}: NaN pattern differs")
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(y64[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)])
    A = BOUND_A[op, "float64" if y.dtype == np.float64 else "float32"]
    u = unit_roundoff(y.dtype)
    tiny = float(np.finfo(y.dtype).smallest_subnormal) * 2
    if out_dtype is not None:  # one more rounding, to a format with a larger u
        fi = ml_dtypes.finfo(out_dtype)
        u = u + float(fi.eps) / 2 / A
        tiny = float(fi.smallest_subnormal)
    lse = reference.logsumexp(x64, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        if op == "softmax":
            cond = np.abs(x64 - lse)
            cond = np.where(np.isfinite(cond), cond, 0)
            bound = (A + cond) * u * np.abs(ref) + tiny
        elif op == "log_softmax":
            bound = A * (np.abs(ref) + 1) * u + tiny
        else:
            bound = A * u * (np.abs(ref) + 1) + tiny
        err = np.abs(y64 - ref)
    bad = fin & ~(err <= bound)
    if bad.any():
        i = np.argwhere(bad)[0]
        raise AssertionError(
            f"{op}: {bad.sum()} elements out of bound; first at {tuple(i)}: y={y64[tuple(i)]!r} "
            f"ref={ref[tuple(i)]!r} err={err[tuple(i)]:.3g} bound={bound[tuple(i)]:.3g}"
        )


def run(op: str, x, **kw):
    return twopass._softmax.compute(op, x, **kw)


@pytest.fixture(scope="session", autouse=True)
def _torch_autograd_node():
    """twopass.torch's C++ autograd node (src/twopass/torch/_node.py) loaded before any
    test, so every gradient test runs through it rather than through whichever of it
    and the autograd Functions a background build left in place at that moment (both
    give the same bits: tests/test_torch_node.py)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        yield
        return
    from twopass.torch import _eager, _node

    _node.start(_eager.use_node, wait=True)
    yield
