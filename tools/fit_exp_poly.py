"""Fit the polynomial that the kernels use for exp on the reduced interval.

exp(t) ~= 1 + t * (c1 + t * (c2 + ... + t * cd)),  |t| <= ln(2)/2 (+ a little slack
for the rounding of round(x*log2(e))). Minimises the maximum *relative* error with
Lawson's iteratively reweighted least squares (converges to the minimax fit), with the
constant term pinned to 1 so exp(0) is exact. Coefficients are then rounded to the
target precision and the error of the rounded polynomial is measured in float128-ish
(numpy longdouble) against mpmath-free exp computed in longdouble.

Run:  python tools/fit_exp_poly.py   (prints the C++ constants for csrc/kernels/exp.h, ExpConst)
"""

import numpy as np


def fit(degree: int, dtype, iters: int = 200) -> np.ndarray:
    half = np.log(2.0) / 2 * 1.002  # slack for the rounding of x*log2(e)
    t = np.cos(np.linspace(0, np.pi, 4001)) * half  # Chebyshev-spaced grid
    t = t[t != 0]
    target = (np.expm1(t) / t).astype(np.longdouble)  # exp(t) = 1 + t*q(t)
    # Fit in u = t/half (well conditioned), then rescale the coefficients to t.
    A = np.vander(t / half, degree, increasing=True)  # q = a1 + a2 u + ...
    w = np.ones_like(t)
    for _ in range(iters):
        sw = np.sqrt(w)
        c, *_ = np.linalg.lstsq(A * sw[:, None], target.astype(float) * sw, rcond=None)
        err = np.abs((A @ c - target.astype(float)) * t / np.exp(t))
        w = w * err / np.sum(w * err) * len(t)
    return (c / half ** np.arange(degree)).astype(dtype)


def fit_chebyshev(degree: int, dtype) -> np.ndarray:
    """Interpolate q at Chebyshev nodes: near-minimax, and stable where the
    reweighting above runs out of float64 precision (the double polynomial)."""
    half = np.log(2.0) / 2 * 1.002
    k = np.arange(degree)
    u = np.cos((2 * k + 1) * np.pi / (2 * degree))
    t = u * half
    cheb = np.polynomial.chebyshev.chebfit(u, np.expm1(t) / t, degree - 1)
    a = np.polynomial.chebyshev.cheb2poly(cheb)
    return (a / half ** np.arange(degree)).astype(dtype)


def max_rel_err(c: np.ndarray) -> float:
    t = np.linspace(-np.log(2) / 2 * 1.002, np.log(2) / 2 * 1.002, 200001).astype(np.longdouble)
    q = np.zeros_like(t)
    for ck in c[::-1]:
        q = q * t + np.longdouble(ck)
    p = 1 + t * q
    return float(np.max(np.abs(p / np.exp(t) - 1)))


if __name__ == "__main__":
    for name, deg, dt, method in (("float", 5, np.float32, fit), ("double", 12, np.float64, fit_chebyshev)):
        c = method(deg, dt)
        print(f"// {name}: degree {deg}, max relative error {max_rel_err(c):.3g}")
        print(", ".join(np.format_float_scientific(x, unique=True) for x in c))
