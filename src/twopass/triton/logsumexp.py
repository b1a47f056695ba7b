"""logsumexp (forward and backward) for CUDA tensors, in Triton.

The forward runs the softmax-family kernels of `softmax.py` with the logsumexp op (its
planner `_run` and its `cfg=` settings): one read of x (1R). A row that fits in registers
is reduced by one program; a long row is cut into chunks whose (max, sum of exp) pairs are
merged by the row's last chunk to finish, without a second phase. The result is in x's
dtype, in C order over the non-reduced dimensions.

The backward is element-wise, dx = g * exp(x - lse) with g and lse of the reduced shape:
`_lse_bwd_row_kernel` when the reduced axis has unit stride (blocks of ROWS rows x BLOCK
elements), `_lse_bwd_col_kernel` when it is strided (tiles of [TN rows of n, BQ unit-stride
columns]). Traffic 1R + 1W, plus the small g and lse.

Special values (as torch): a row with NaN gives NaN, with +inf +inf, all -inf -inf; huge
finite values do not overflow (only differences x - max are exponentiated).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._common import _LOG2E, _to
from ._launch import _cdiv, _check, _launch_kernel, _norm_dim, _pow2, _prepare, _reduced_shape, _trace
from .softmax import _config, _run

__all__ = ["_logsumexp_forward", "_logsumexp_backward"]


# ----------------------------------------------------------------------------------
# logsumexp backward: dx = g * exp(x - lse), element-wise (1R + 1W, plus the small g, lse).
# ----------------------------------------------------------------------------------
@triton.jit
def _lse_bwd_row_kernel(
    X, G, LSE, DX, n_rows, n, inner, s_o, s_i, s_n, nb,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, VEC: tl.constexpr, SHIFT: tl.constexpr,
):  # fmt: skip
    # Rows on the 16-byte grid as in softmax._row_fused_kernel: grid index t in [lo, hi)
    # holds the row; whole vectors are read and written, the partial ones at a row's ends
    # apart (SHIFT: rows may start off the grid; else lo = 0 and n is a multiple of VEC).
    pid = tl.program_id(0).to(tl.int64)
    rb = pid // nb
    b = pid - rb * nb
    r = rb * ROWS + tl.arange(0, ROWS)  # rows, also their index in the (outer, inner) C-order g and lse
    rmask = r < n_rows
    o = r // inner
    i = r - o * inner
    base = o * s_o + i * s_i
    lo = base % VEC
    row0 = tl.multiple_of(base - lo, VEC)
    hi = lo + n if SHIFT else n
    g = tl.load(G + r, mask=rmask, other=0.0).to(tl.float32)
    lse = tl.load(LSE + r, mask=rmask, other=0.0).to(tl.float32)
    b0 = b * BLOCK
    cols = b0 + tl.arange(0, BLOCK)[None, :]
    offs = row0[:, None] + cols * s_n
    ld_hi = tl.multiple_of((hi + VEC - 1) // VEC * VEC, VEC)
    if SHIFT:
        ld_hi = ld_hi[:, None]
    x = tl.load(X + offs, mask=rmask[:, None] & (cols < ld_hi), other=0.0, eviction_policy="evict_first")
    dx = g[:, None] * tl.exp2((x.to(tl.float32) - lse[:, None]) * _LOG2E)
    if SHIFT:
        st_lo = tl.multiple_of((lo + VEC - 1) // VEC * VEC, VEC)
        st_hi = tl.multiple_of(hi // VEC * VEC, VEC)
        tl.store(DX + offs, _to(dx, DX), mask=rmask[:, None] & (cols >= st_lo[:, None]) & (cols < st_hi[:, None]))
        ea = tl.arange(0, VEC)[None, :]
        for end in tl.static_range(2):  # the partial vectors at each row's ends, where in this block
            if end == 0:
                lt = lo[:, None] + ea
                msk = lt < tl.minimum(st_lo, hi)[:, None]
            else:
                lt = tl.maximum(st_hi, st_lo)[:, None] + ea
                msk = lt < hi[:, None]
            msk = msk & rmask[:, None] & (lt >= b0) & (lt < b0 + BLOCK)
            xe = tl.load(X + row0[:, None] + lt, mask=msk, other=0.0).to(tl.float32)
            tl.store(DX + row0[:, None] + lt, _to(g[:, None] * tl.exp2((xe - lse[:, None]) * _LOG2E), DX), mask=msk)
    else:
        tl.store(DX + offs, _to(dx, DX), mask=rmask[:, None] & (cols < ld_hi))


@triton.jit
def _lse_bwd_col_kernel(X, G, LSE, DX, n, Q, s_p, s_n, s_q, so_p, so_q, nqt, nb, TN: tl.constexpr, BQ: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    grp = pid // nb
    b = pid - grp * nb
    p = grp // nqt
    q = (grp - p * nqt) * BQ + tl.arange(0, BQ)
    qmask = q < Q
    g = tl.load(G + p * so_p + q * so_q, mask=qmask, other=0.0).to(tl.float32)
    lse = tl.load(LSE + p * so_p + q * so_q, mask=qmask, other=0.0).to(tl.float32)
    jj = b * TN + tl.arange(0, TN)
    mask = (jj < n)[:, None] & qmask[None, :]
    offs = p * s_p + jj[:, None] * s_n + q[None, :] * s_q
    x = tl.load(X + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    dx = g[None, :] * tl.exp2((x - lse[None, :]) * _LOG2E)
    tl.store(DX + offs, _to(dx, DX), mask=mask)


# ----------------------------------------------------------------------------------
# Launchers.
# ----------------------------------------------------------------------------------
def _logsumexp_forward(x: torch.Tensor, dim: int = -1, keepdim: bool = False, *, cfg: dict[str, Any] | None = None):
    """log(sum(exp(x))) over `dim`, in one pass over x; result in x's dtype, C order."""
    name = "twopass.triton.logsumexp"
    _check(x, name)
    cfg = _config(cfg)
    if x.dim() == 0:
        return _logsumexp_forward(x.reshape(1), 0, False, cfg=cfg).reshape(())
    dim = _norm_dim(dim, x.dim(), name)
    out = torch.empty(_reduced_shape(x.shape, dim, keepdim), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if x.shape[dim] == 0:
        return out.fill_(float("-inf"))
    x, lay = _prepare(x, dim)
    outer, _, inner = lay[0], lay[1], lay[2]
    _run("logsumexp", x, None, None, lay, out.view(outer, inner), cfg)
    return out


def _logsumexp_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    lse: torch.Tensor,
    dim: int = -1,
    keepdim: bool = False,
    *,
    cfg: dict[str, Any] | None = None,
):
    """Gradient of logsumexp wrt x: grad * exp(x - lse), grad and lse of the reduced shape."""
    name = "twopass.triton.logsumexp_backward"
    _check(x, name)
    _check(grad, name)
    cfg = _config(cfg)
    if x.dim() == 0:
        return _logsumexp_backward(grad.reshape(()), x.reshape(1), lse.reshape(()), 0, False, cfg=cfg).reshape(())
    dim = _norm_dim(dim, x.dim(), name)
    rshape = _reduced_shape(x.shape, dim, keepdim)
    if tuple(grad.shape) != rshape or tuple(lse.shape) != rshape:
        raise ValueError(f"{name}: grad and lse must have shape {rshape}")
    if x.numel() == 0:
        return torch.empty_like(x)
    x, lay = _prepare(x, dim)
    outer, n, inner, s_o, s_n, s_i = lay
    g = grad.contiguous().view(outer, inner)
    lse = lse.contiguous().view(outer, inner)
    dx = torch.empty_like(x, dtype=grad.dtype) if grad.dtype != x.dtype else torch.empty_like(x)
    vec = 16 // x.element_size()
    if s_n == 1 or n == 1:
        # 16-byte accesses on the aligned grid (softmax._run has the same rule).
        a = vec if s_n == 1 and all(t.data_ptr() % 16 == 0 for t in (x, dx)) else 1
        shift = a > 1 and any(v % a for v in (n, s_o if outer > 1 else 0, s_i if inner > 1 else 0))
        span = n + a - 1 if shift else n
        block = min(_pow2(span), 4096)
        rows = max(1, min(4096 // block, _pow2(outer * inner)))
        nb = _cdiv(span, block)
        _trace("lse_bwd_row", block=block, rows=rows, VEC=a, SHIFT=shift)
        _launch_kernel(
            _lse_bwd_row_kernel, _cdiv(outer * inner, rows) * nb,
            (x, g, lse, dx, outer * inner, n, inner, s_o, s_i, s_n, nb),
            dict(ROWS=rows, BLOCK=block, VEC=a, SHIFT=shift), max(1, min(8, rows * block // 512)),
        )  # fmt: skip
        return dx
    if inner > 1 and s_i == 1:
        P, Q, s_p, s_q, so_p, so_q = outer, inner, s_o, s_i, inner, 1
    else:
        P, Q, s_p, s_q, so_p, so_q = inner, outer, s_i, s_o, 1, inner
    bq = min(_pow2(Q), cfg["col_bq"] or vec * 32)
    tn = max(1, min(_pow2(n), cfg["col_tile_elems"] // bq))
    nqt = _cdiv(Q, bq)
    nb = _cdiv(n, tn)
    _trace("lse_bwd_col", tn=tn, bq=bq)
    _launch_kernel(
        _lse_bwd_col_kernel, P * nqt * nb, (x, g, lse, dx, n, Q, s_p, s_n, s_q, so_p, so_q, nqt, nb),
        dict(TN=tn, BQ=bq), max(1, min(8, tn * bq // 512)),
    )  # fmt: skip
    return dx
