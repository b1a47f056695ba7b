"""Softmax and log_softmax (forward and backward) for CUDA tensors, in Triton, and the
softmax-family kernels that also serve logsumexp's forward (`logsumexp.py`).

Every launcher sees its tensor as (outer, n, inner) (`_launch.py`): `n` is the reduced axis,
`outer` the dimensions before it and `inner` those after, each group merged into one index
with one stride. Inputs whose groups do not merge, that are not dense (a slice with gaps, an
expanded tensor) or that have no unit-stride axis among (outer, n, inner) are copied to C
order first (one extra read and write); everything else runs in place in memory, and
results get the input's strides. The reduction state of a row is the pair (m, s):
m = max(x), s = sum(exp(x - m)). Pairs merge exactly and in any grouping:
(m1, s1) + (m2, s2) = (M, s1*e^(m1-M) + s2*e^(m2-M)) with M = max(m1, m2); the merge order
is fixed by the code, never by timing, so results are bitwise reproducible (no
floating-point atomics anywhere).

The kernels, chosen by the launcher (`_run`; the op is a constexpr of each kernel):

- `_row_fused_kernel`: the reduced axis has unit stride and a row fits in registers
  (n <= 16384): one program holds ROWS whole rows. Traffic 1R + 1W (backward: y and g
  read, dx written, 2R + 1W).
- `_row_split_kernel`: longer rows. Each row is cut into k chunks; each chunk is a work
  item of phase 0 (read it, write its partial pair) and of phase 1 (merge the row's k
  pairs, read the chunk again, write the result). One launch runs both phases: programs
  take work items from a ticket counter in the order they start, and the item order
  interleaves phase 0 of row r + lag with phase 1 of row r, so that a chunk is read again
  while it is still in L2 (`lag` rows fill a quarter of L2; phase-0 loads carry an
  evict_last hint, phase-1 loads and stores evict_first). Traffic 1R + 1W from HBM when a
  row fits in L2, else 2R + 1W. Phase 1 of row r waits (spins on the row's counter) only
  for phase-0 items that took earlier tickets, i.e. programs already running: no deadlock
  whatever the number of programs that fit on the GPU, and the interpreter (which runs
  programs one by one, in ticket order) never waits at all.
- `_col_fused_kernel` / `_col_split_kernel`: the reduced axis is strided and another axis
  has unit stride (softmax over dim 0 of a C-contiguous tensor, or over the last dim of a
  transposed one): tiles of [rows of n, BQ contiguous columns], loads coalesced along the
  columns, reduction across the tile's rows; the same two phases when n is long.
- logsumexp (`logsumexp.py`) needs phase 0 only: the last chunk to finish a row (its
  counter says so) merges the row's pairs and writes the result: 1R.

exp is tl.exp2(x * log2(e)) (ex2.approx on the GPU): relative error about |x| * 2^-24 plus
2 ulp, inside the conditioning bound (|x_i - lse| + A) * u every float32 softmax pays;
results under float32's smallest normal may be flushed to zero. log is libdevice's logf.

Special values (as torch): a row with NaN gives NaN (logsumexp NaN); with +inf, NaN
(logsumexp +inf); all -inf, NaN (logsumexp -inf); -inf entries give 0 (log_softmax -inf);
huge finite values never overflow (only differences x - max are exponentiated). The max
propagates NaN (max.NaN); the partial maxima start at -FLT_MAX, not -inf, so that an
all -inf chunk gives the pair (-FLT_MAX, 0) and no inf - inf.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._common import _LOG2E, _NEG_BIG, _decode, _local, _lse_of, _max_nan, _publish, _to, _wait
from ._launch import (
    _cdiv,
    _check,
    _device_caps,
    _hints,
    _lag,
    _launch_kernel,
    _merged_config,
    _norm_dim,
    _pow2,
    _prepare,
    _same_layout,
    _trace,
)

__all__ = ["_softmax_forward", "_softmax_backward"]

# Operation codes (constexpr in the kernels).
_SOFTMAX = tl.constexpr(0)
_LOG_SOFTMAX = tl.constexpr(1)
_LOGSUMEXP = tl.constexpr(2)
_SOFTMAX_BWD = tl.constexpr(3)  # dx = y * (g - sum(g * y))
_LOG_SOFTMAX_BWD = tl.constexpr(4)  # dx = g - exp(y) * sum(g)
_OPS = {"softmax": 0, "log_softmax": 1, "logsumexp": 2, "softmax_bwd": 3, "log_softmax_bwd": 4}


# ----------------------------------------------------------------------------------
# Rows with unit stride along the reduced axis, fitting in registers: 1R + 1W.
# ----------------------------------------------------------------------------------
@triton.jit
def _row_fused_kernel(
    X,  # forward: x; backward: y (the forward's output)
    G,  # backward: the incoming gradient (same strides as X); forward: unused
    Y,  # the result; for logsumexp one value per row at o * so_o + i * so_i
    n_rows,
    n,
    inner,
    s_o,
    s_i,
    s_n,
    so_o,
    so_i,
    OP: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    VEC: tl.constexpr,  # elements per 16-byte access when s_n == 1 and the pointers are aligned, else 1
    SHIFT: tl.constexpr,  # rows may start off the 16-byte grid (else every row start and n are multiples of VEC)
):
    # Vector accesses (see _row_split_kernel): each row is read on the aligned grid below it,
    # t in [lo, hi) holding the row; with SHIFT false lo = 0 and n is a multiple of VEC.
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    o = rows // inner
    i = rows - o * inner
    base = o * s_o + i * s_i
    # (base - lo, not base: Triton drops a hint on an operation that folds away, and base
    # folds to o * s_o when inner is 1. Without SHIFT, lo is 0.)
    lo = base % VEC
    rb = tl.multiple_of(base - lo, VEC)
    hi = lo + n if SHIFT else n
    ld_hi = tl.multiple_of((hi + VEC - 1) // VEC * VEC, VEC)
    cols = tl.arange(0, BLOCK_N)[None, :]
    offs = rb[:, None] + cols * s_n
    if SHIFT:
        ld_hi = ld_hi[:, None]
        valid = (cols >= lo[:, None]) & (cols < hi[:, None])
    ld_mask = rmask[:, None] & (cols < ld_hi)
    if OP <= _LOGSUMEXP:
        x = tl.load(X + offs, mask=ld_mask, other=float("-inf"), eviction_policy="evict_first").to(tl.float32)
        if SHIFT:
            x = tl.where(valid, x, float("-inf"))
        m = tl.reduce(x, 1, _max_nan)
        d = x - m[:, None]  # exact when x is near m; -inf (not NaN) for -inf entries
        e = tl.exp2(d * _LOG2E)
        s = tl.sum(e, 1)
        if OP == _SOFTMAX:
            y = e * (1.0 / s)[:, None]
        elif OP == _LOG_SOFTMAX:
            y = d - tl.log(s)[:, None]
        else:
            tl.store(Y + o * so_o + i * so_i, _to(_lse_of(m, s), Y), mask=rmask)
    else:
        yv = tl.load(X + offs, mask=ld_mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        g = tl.load(G + offs, mask=ld_mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        if SHIFT:  # both: g * y of a neighbour's (or unallocated) element may be inf * 0
            g = tl.where(valid, g, 0.0)
            yv = tl.where(valid, yv, 0.0)
        if OP == _SOFTMAX_BWD:
            m = tl.zeros([ROWS], tl.float32)
            s = tl.sum(g * yv, 1)
            y = yv * (g - s[:, None])
        else:
            m = tl.zeros([ROWS], tl.float32)
            s = tl.sum(g, 1)
            y = g - tl.exp2(yv * _LOG2E) * s[:, None]
    if OP != _LOGSUMEXP:
        if SHIFT:
            st_lo = tl.multiple_of((lo + VEC - 1) // VEC * VEC, VEC)
            st_hi = tl.multiple_of(hi // VEC * VEC, VEC)
            st_mask = (cols >= st_lo[:, None]) & (cols < st_hi[:, None])
        else:
            st_mask = cols < ld_hi
        tl.store(Y + offs, _to(y, Y), mask=rmask[:, None] & st_mask)
        if SHIFT:  # the partial vectors at each row's ends
            ea = tl.arange(0, VEC)[None, :]
            for end in tl.static_range(2):
                if end == 0:
                    lt = lo[:, None] + ea
                    msk = lt < tl.minimum(st_lo, hi)[:, None]
                else:
                    lt = tl.maximum(st_hi, st_lo)[:, None] + ea
                    msk = lt < hi[:, None]
                msk = msk & rmask[:, None]
                yr = _phase1_values(X + rb[:, None], G + rb[:, None], lt, msk, m[:, None], s[:, None], OP, "")
                tl.store(Y + rb[:, None] + lt, _to(yr, Y), mask=msk)


# ----------------------------------------------------------------------------------
# Long rows, unit stride: chunks, two phases in one launch (see the module docstring).
# Tiles are [K, CW] with CW = 16 bytes * 32 lanes * warps: a thread holds K vectors of one
# column strip, so the per-tile max over axis 0 stays in registers, and the running pair
# is kept per column lane (one rescale per K elements: about 1.1 exp per element).
# ----------------------------------------------------------------------------------
# Not specialized on the value 1 (one variant fewer to compile each): nothing gains from it.
#
# Vector accesses on any row length: Triton proves a 16-byte access only from divisibility,
# and a row of odd length (a vocabulary of 50257) starts at an unaligned address. With
# VEC = 16 bytes / element size (the launcher passes VEC = 1 when a pointer itself is not
# 16-byte aligned), each row is read on a grid that starts at the aligned address just
# below it: row-local index t in [lo, hi) holds the row, lo = base mod VEC < VEC. Loads cover
# whole vectors ([0, round_up(hi, VEC)): never past the 16-byte block of a row element, so
# never a fault) and mask the neighbours' elements out afterwards; phase-1 stores write
# whole vectors inside the row, and the two partial vectors at its ends separately.
# Indices: the chunk's origin is a 64-bit scalar; per-element indices are chunk-local
# 32-bit values, so a row may hold more than 2^31 elements.
@triton.jit(do_not_specialize=["n_rows", "k", "lag"])
def _row_split_kernel(
    X,
    G,
    Y,
    PART,  # float32 [n_rows, KP, 2]: each chunk's pair (m, s) (backward: (0, sum))
    CNT,  # int32 [1 + n_rows]: the ticket counter, then one arrival counter per row
    n_rows,
    n,
    inner,
    s_o,
    s_i,
    so_o,
    so_i,
    k,  # chunks per row
    chunk,  # elements per chunk (a multiple of K * CW), of the aligned grid
    lag,  # rows between a row's phase 0 and its phase 1
    OP: tl.constexpr,
    K: tl.constexpr,
    CW: tl.constexpr,
    KP: tl.constexpr,  # next power of two >= k
    VEC: tl.constexpr,  # elements per 16-byte access, or 1 (see above)
    KEEP: tl.constexpr,  # L2 policy of phase-0 loads ("evict_last": keep for phase 1)
    DROP: tl.constexpr,  # of phase-1 loads and stores ("evict_first")
):
    t = tl.atomic_add(CNT, 1)  # a ticket: work items are taken in the order programs start
    u = t // k
    c = t - u * k
    if OP == _LOGSUMEXP:
        phase = 0
        row = u
    else:
        phase, row = _decode(u, n_rows, lag)
    row64 = row.to(tl.int64)
    o = row64 // inner
    i = row64 - o * inner
    base = o * s_o + i * s_i
    lo = base % VEC  # the row's first element on the aligned grid
    start = c.to(tl.int64) * chunk
    origin = tl.multiple_of(base - lo + start, VEC)  # the chunk's first grid element
    Xc = X + origin
    Gc = G + origin
    Yc = Y + origin
    hi = lo + n
    # Chunk-local bounds, each clamped to [0, chunk]: the row's elements [v_lo, v_hi); the
    # whole vectors to load [0, ld_hi) and to store [st_lo, st_hi) (multiples of VEC).
    v_lo = _local(lo, start, chunk)
    v_hi = _local(hi, start, chunk)
    ld_hi = tl.multiple_of(_local((hi + VEC - 1) // VEC * VEC, start, chunk), VEC)
    st_lo = tl.multiple_of(_local((lo + VEC - 1) // VEC * VEC, start, chunk), VEC)
    st_hi = tl.multiple_of(_local(hi // VEC * VEC, start, chunk), VEC)
    tile = tl.arange(0, K)[:, None] * CW + tl.arange(0, CW)[None, :]
    pair = PART + (row64 * KP + c) * 2
    kk = tl.arange(0, KP)
    if phase == 0:
        if OP <= _LOGSUMEXP:
            m = tl.full([CW], _NEG_BIG, tl.float32)
            s = tl.zeros([CW], tl.float32)
            for j in range(0, chunk, K * CW):
                lt = j + tile
                x = tl.load(Xc + lt, mask=lt < ld_hi, other=float("-inf"), eviction_policy=KEEP).to(tl.float32)
                if VEC > 1:
                    x = tl.where((lt >= v_lo) & (lt < v_hi), x, float("-inf"))
                m_new = _max_nan(m, tl.reduce(x, 0, _max_nan))
                e = tl.exp2((x - m_new[None, :]) * _LOG2E)
                s = s * tl.exp2((m - m_new) * _LOG2E) + tl.sum(e, 0)
                m = m_new
            pm = tl.reduce(m, 0, _max_nan)
            ps = tl.sum(s * tl.exp2((m - pm) * _LOG2E), 0)
        else:
            acc = tl.zeros([K, CW], tl.float32)
            for j in range(0, chunk, K * CW):
                lt = j + tile
                msk = lt < ld_hi
                g = tl.load(Gc + lt, mask=msk, other=0.0, eviction_policy=KEEP).to(tl.float32)
                if OP == _SOFTMAX_BWD:
                    yv = tl.load(Xc + lt, mask=msk, other=0.0, eviction_policy=KEEP)
                    g = g * yv.to(tl.float32)
                if VEC > 1:
                    g = tl.where((lt >= v_lo) & (lt < v_hi), g, 0.0)
                acc += g
            pm = 0.0
            ps = tl.sum(tl.sum(acc, 0), 0)
        tl.store(pair, pm)
        tl.store(pair + 1, ps)
        before = _publish(CNT + 1 + row)
        if OP == _LOGSUMEXP:
            if before == k - 1:  # the row's last chunk: merge the k pairs, write lse
                pms = tl.load(PART + (row64 * KP + kk) * 2, mask=kk < k, other=_NEG_BIG, cache_modifier=".cg")
                pss = tl.load(PART + (row64 * KP + kk) * 2 + 1, mask=kk < k, other=0.0, cache_modifier=".cg")
                M = tl.reduce(pms, 0, _max_nan)
                S = tl.sum(pss * tl.exp2((pms - M) * _LOG2E), 0)
                tl.store(Y + o * so_o + i * so_i, _to(_lse_of(M, S), Y))
    else:
        _wait(CNT + 1 + row, k)
        pss = tl.load(PART + (row64 * KP + kk) * 2 + 1, mask=kk < k, other=0.0, cache_modifier=".cg")
        if OP <= _LOG_SOFTMAX:
            pms = tl.load(PART + (row64 * KP + kk) * 2, mask=kk < k, other=_NEG_BIG, cache_modifier=".cg")
            M = tl.reduce(pms, 0, _max_nan)
            S = tl.sum(pss * tl.exp2((pms - M) * _LOG2E), 0)
        else:
            M = 0.0
            S = tl.sum(pss, 0)
        for j in range(0, chunk, K * CW):
            lt = j + tile
            y = _phase1_values(Xc, Gc, lt, lt < ld_hi, M, S, OP, DROP)
            tl.store(Yc + lt, _to(y, Y), mask=(lt >= st_lo) & (lt < st_hi), eviction_policy=DROP)
        if VEC > 1:  # the partial vectors at the row's ends (empty in most chunks)
            ea = tl.arange(0, VEC)
            for end in tl.static_range(2):
                if end == 0:  # the row's first vector
                    lt = v_lo + ea
                    msk = lt < tl.minimum(st_lo, v_hi)
                else:  # its last
                    lt = tl.maximum(st_hi, st_lo) + ea
                    msk = lt < v_hi
                y = _phase1_values(Xc, Gc, lt, msk, M, S, OP, DROP)
                tl.store(Yc + lt, _to(y, Y), mask=msk, eviction_policy=DROP)


@triton.jit
def _phase1_values(Xc, Gc, lt, msk, M, S, OP: tl.constexpr, DROP: tl.constexpr):
    # Phase 1's result at chunk-local indices lt, from the row's merged statistics: the pair
    # (M, S) forward, the sum S = sum(g * y) or sum(g) backward.
    if OP <= _LOG_SOFTMAX:
        x = tl.load(Xc + lt, mask=msk, other=0.0, eviction_policy=DROP).to(tl.float32)
        if OP == _SOFTMAX:
            y = tl.exp2((x - M) * _LOG2E) * (1.0 / S)
        else:
            y = (x - M) - tl.log(S)
    else:
        yv = tl.load(Xc + lt, mask=msk, other=0.0, eviction_policy=DROP).to(tl.float32)
        g = tl.load(Gc + lt, mask=msk, other=0.0, eviction_policy=DROP).to(tl.float32)
        if OP == _SOFTMAX_BWD:
            y = yv * (g - S)
        else:
            y = g - tl.exp2(yv * _LOG2E) * S
    return y


# ----------------------------------------------------------------------------------
# Strided reduced axis, unit-stride columns: tiles [rows of n, BQ columns].
# Indices: p (the other, strided index), j along n, q along the unit-stride axis.
# ----------------------------------------------------------------------------------
@triton.jit
def _col_fused_kernel(
    X,
    G,
    Y,
    n,
    Q,
    s_p,
    s_n,
    s_q,
    so_p,
    so_q,
    nqt,  # column tiles per p
    OP: tl.constexpr,
    BN: tl.constexpr,
    BQ: tl.constexpr,
):
    pid = tl.program_id(0)
    p = pid // nqt
    q = (pid - p * nqt) * BQ + tl.arange(0, BQ)
    qmask = q < Q
    jj = tl.arange(0, BN)
    mask = (jj < n)[:, None] & qmask[None, :]
    offs = p.to(tl.int64) * s_p + jj.to(tl.int64)[:, None] * s_n + q[None, :] * s_q
    if OP <= _LOGSUMEXP:
        x = tl.load(X + offs, mask=mask, other=float("-inf"), eviction_policy="evict_first").to(tl.float32)
        m = tl.reduce(x, 0, _max_nan)
        d = x - m[None, :]
        e = tl.exp2(d * _LOG2E)
        s = tl.sum(e, 0)
        if OP == _SOFTMAX:
            tl.store(Y + offs, _to(e * (1.0 / s)[None, :], Y), mask=mask)
        elif OP == _LOG_SOFTMAX:
            tl.store(Y + offs, _to(d - tl.log(s)[None, :], Y), mask=mask)
        else:
            tl.store(Y + p.to(tl.int64) * so_p + q * so_q, _to(_lse_of(m, s), Y), mask=qmask)
    else:
        yv = tl.load(X + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        if OP == _SOFTMAX_BWD:
            dx = yv * (g - tl.sum(g * yv, 0)[None, :])
        else:
            dx = g - tl.exp2(yv * _LOG2E) * tl.sum(g, 0)[None, :]
        tl.store(Y + offs, _to(dx, Y), mask=mask)


@triton.jit(do_not_specialize=["n_groups", "k", "lag"])
def _col_split_kernel(
    X,
    G,
    Y,
    PART,  # float32 [n_groups, KP, 2, BQ]
    CNT,  # int32 [1 + n_groups]
    n,
    Q,
    s_p,
    s_n,
    s_q,
    so_p,
    so_q,
    n_groups,  # P * nqt: a group is (p, one tile of BQ columns)
    nqt,
    k,
    chunk,  # rows of n per chunk (a multiple of TN)
    lag,
    OP: tl.constexpr,
    TN: tl.constexpr,
    BQ: tl.constexpr,
    KP: tl.constexpr,
    KEEP: tl.constexpr,  # L2 policy of phase-0 loads ("evict_last": keep for phase 1)
    DROP: tl.constexpr,  # of phase-1 loads and stores ("evict_first")
):
    t = tl.atomic_add(CNT, 1)
    u = t // k
    c = t - u * k
    if OP == _LOGSUMEXP:
        phase = 0
        grp = u
    else:
        phase, grp = _decode(u, n_groups, lag)
    p = grp // nqt
    ql = tl.arange(0, BQ)
    q = (grp - p * nqt) * BQ + ql
    qmask = q < Q
    base = p.to(tl.int64) * s_p
    jt = tl.arange(0, TN)
    start = c * chunk
    g64 = grp.to(tl.int64)
    pair = PART + (g64 * KP + c) * 2 * BQ
    kk = tl.arange(0, KP)
    pidx = (g64 * KP + kk[:, None]) * 2 * BQ + ql[None, :]  # [KP, BQ] pair slots of the group
    pmask = (kk < k)[:, None] & qmask[None, :]
    if phase == 0:
        if OP <= _LOGSUMEXP:
            # Element-wise running pairs over the tile, merged across its rows at the end. One
            # exp per element: of the two terms exp(m - m') and exp(x - m'), one is 1 (m' is m
            # or x), the other exp(-|x - m|). -inf entries add 0; a NaN makes m and s NaN.
            m = tl.full([TN, BQ], _NEG_BIG, tl.float32)
            s = tl.zeros([TN, BQ], tl.float32)
            for j0 in range(0, chunk, TN):
                jj = start + j0 + jt
                msk = (jj < n)[:, None] & qmask[None, :]
                offs = base + jj.to(tl.int64)[:, None] * s_n + q[None, :] * s_q
                x = tl.load(X + offs, mask=msk, other=float("-inf"), eviction_policy=KEEP).to(tl.float32)
                d = x - m
                e = tl.exp2(-tl.abs(d) * _LOG2E)
                s = tl.where(d > 0, s * e + 1.0, s + e)
                m = _max_nan(m, x)
            pm = tl.reduce(m, 0, _max_nan)
            ps = tl.sum(s * tl.exp2((m - pm[None, :]) * _LOG2E), 0)
        else:
            acc = tl.zeros([TN, BQ], tl.float32)
            for j0 in range(0, chunk, TN):
                jj = start + j0 + jt
                msk = (jj < n)[:, None] & qmask[None, :]
                offs = base + jj.to(tl.int64)[:, None] * s_n + q[None, :] * s_q
                g = tl.load(G + offs, mask=msk, other=0.0, eviction_policy=KEEP).to(tl.float32)
                if OP == _SOFTMAX_BWD:
                    yv = tl.load(X + offs, mask=msk, other=0.0, eviction_policy=KEEP)
                    acc += g * yv.to(tl.float32)
                else:
                    acc += g
            ps = tl.sum(acc, 0)
            pm = tl.zeros([BQ], tl.float32)
        tl.store(pair + ql, pm)
        tl.store(pair + BQ + ql, ps)
        before = _publish(CNT + 1 + grp)
        if OP == _LOGSUMEXP:
            if before == k - 1:
                pms = tl.load(PART + pidx, mask=pmask, other=_NEG_BIG, cache_modifier=".cg")
                pss = tl.load(PART + pidx + BQ, mask=pmask, other=0.0, cache_modifier=".cg")
                M = tl.reduce(pms, 0, _max_nan)
                S = tl.sum(pss * tl.exp2((pms - M[None, :]) * _LOG2E), 0)
                out = Y + p.to(tl.int64) * so_p + q * so_q
                tl.store(out, _to(_lse_of(M, S), Y), mask=qmask)
    else:
        _wait(CNT + 1 + grp, k)
        pss = tl.load(PART + pidx + BQ, mask=pmask, other=0.0, cache_modifier=".cg")
        if OP <= _LOG_SOFTMAX:
            pms = tl.load(PART + pidx, mask=pmask, other=_NEG_BIG, cache_modifier=".cg")
            M = tl.reduce(pms, 0, _max_nan)
            S = tl.sum(pss * tl.exp2((pms - M[None, :]) * _LOG2E), 0)
            r = 1.0 / S
            log_s = tl.log(S)
        else:
            S = tl.sum(pss, 0)
        for j0 in range(0, chunk, TN):
            jj = start + j0 + jt
            msk = (jj < n)[:, None] & qmask[None, :]
            offs = base + jj.to(tl.int64)[:, None] * s_n + q[None, :] * s_q
            if OP <= _LOG_SOFTMAX:
                x = tl.load(X + offs, mask=msk, other=0.0, eviction_policy=DROP).to(tl.float32)
                if OP == _SOFTMAX:
                    y = tl.exp2((x - M[None, :]) * _LOG2E) * r[None, :]
                else:
                    y = (x - M[None, :]) - log_s[None, :]
            else:
                yv = tl.load(X + offs, mask=msk, other=0.0, eviction_policy=DROP).to(tl.float32)
                g = tl.load(G + offs, mask=msk, other=0.0, eviction_policy=DROP).to(tl.float32)
                if OP == _SOFTMAX_BWD:
                    y = yv * (g - S[None, :])
                else:
                    y = g - tl.exp2(yv * _LOG2E) * S[None, :]
            tl.store(Y + offs, _to(y, Y), mask=msk, eviction_policy=DROP)


# ----------------------------------------------------------------------------------
# Launchers.
# ----------------------------------------------------------------------------------
# Tuning knobs of the softmax-family launchers (here and in logsumexp.py); `cfg=` on each
# launcher overrides them (the tests shrink every threshold so that each path runs on small
# shapes; the GPU benchmark sweeps some of them).
DEFAULTS: dict[str, Any] = {
    "fused_max_n": 16384,  # longest row kept in registers by _row_fused_kernel
    "fused_elems": 4096,  # elements per program in _row_fused_kernel (ROWS * BLOCK_N) for short rows
    "split_tile_elems": 8192,  # K * CW of _row_split_kernel
    "split_warps": 8,
    "split_cw": None,  # columns of a _row_split_kernel tile; None: 16 bytes * 32 lanes * warps
    "chunk_min": 16384,  # elements per chunk at least (~64 KB of float32)
    "chunk_max": 65536,  # elements per chunk at most, when the rows alone fill the GPU
    "k_max": 512,  # chunks per row at most (each phase-1 program merges k pairs)
    "programs_per_sm": 4,  # split kernels: chunks enough for this many programs per SM and phase
    "l2_fraction": 0.25,  # data read between a row's two phases, as a fraction of L2
    "l2_hints": True,  # eviction-priority hints in the split kernels (see _hints)
    "col_tile_elems": 4096,  # TN * BQ of the column kernels
    "col_fused_elems": 8192,  # BN * BQ at most for _col_fused_kernel
    "col_k_max": 32,
    "col_bq": None,  # columns of a column-kernel tile; None: 16 bytes * 32 lanes
    "col_chunk_min_elems": 16384,  # TN-rows * BQ per chunk at least
    "num_sms": None,  # None: from the device (interpreter: 132)
    "l2_bytes": None,  # None: from the device (interpreter: 50 MB)
}


def _config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    return _merged_config(cfg, DEFAULTS)


# Plans of calls with the default settings, by (op, layout, element size, 16-byte
# alignment, SMs, L2 bytes): planning is host time on every call (tens of microseconds of
# Python against kernels of a few), and a program calls the same shapes again and again.
_PLANS: dict[tuple, tuple] = {}


def _run(op: str, x: torch.Tensor, g: torch.Tensor | None, y: torch.Tensor, lay, out_lse, cfg) -> None:
    """Launch the kernels for `op` on x (for backward: x is the forward's output y and g the
    gradient, with the same strides), writing y (logsumexp: out_lse of shape (outer, inner))."""
    G = g if g is not None else x
    Y = out_lse if op == "logsumexp" else y
    sms, l2 = _device_caps(x, cfg)
    aligned = all(t.data_ptr() % 16 == 0 for t in (x, G, y) if t is not None)
    key = (op, lay, x.element_size(), aligned, sms, l2)
    plan = _PLANS.get(key) if cfg is DEFAULTS else None
    if plan is None:
        plan = _plan(op, lay, x.element_size(), aligned, sms, l2, cfg)
        if cfg is DEFAULTS and len(_PLANS) < 4096:
            _PLANS[key] = plan
    name, kernel, grid, scalars, meta, warps, part_shape, trace = plan
    _trace(name, op=op, **trace)
    if part_shape is None:
        args = (x, G, Y, *scalars)
    else:  # the split kernels' partial pairs and counters (ticket, then one per row/group)
        part = torch.empty(part_shape, dtype=torch.float32, device=x.device)
        cnt = torch.zeros(1 + part_shape[0], dtype=torch.int32, device=x.device)
        args = (x, G, Y, part, cnt, *scalars)
    _launch_kernel(kernel, grid, args, meta, warps)


def _plan(op: str, lay, esize: int, aligned: bool, sms: int, l2: int, cfg) -> tuple:
    """(trace name, kernel, grid, scalar arguments, constexprs, warps, shape of the partials
    or None, trace parameters) of `op` on a tensor of layout `lay`."""
    OP = _OPS[op]
    outer, n, inner, s_o, s_n, s_i = lay
    inputs = 1 if op in ("softmax", "log_softmax", "logsumexp", "log_softmax_bwd") else 2
    vec = 16 // esize  # elements per 16-byte access
    if s_n == 1 or n == 1:
        n_rows = outer * inner
        # logsumexp writes its result in C order over (outer, inner): index o*inner + i.
        so_o, so_i = inner, 1
        # 16-byte accesses (see the kernels): VEC elements per vector when every pointer is
        # aligned and the axis has unit stride; SHIFT when rows may start off that grid.
        a = vec if s_n == 1 and aligned else 1
        shift = a > 1 and any(v % a for v in (n, s_o if outer > 1 else 0, s_i if inner > 1 else 0))
        block_n = _pow2(n + a - 1 if shift else n)
        rows = max(1, min(cfg["fused_elems"] // block_n, _pow2(n_rows)))
        # Rows that fit in registers, unless they would give too few programs to fill the
        # GPU (128 rows of 16384: 128 programs on 132 SMs) and are long enough to split.
        few = _cdiv(n_rows, rows) < cfg["programs_per_sm"] * sms and n >= 2 * _pow2(cfg["split_tile_elems"])
        if n <= cfg["fused_max_n"] and not few:
            elems = rows * block_n
            warps = max(4, min(16, elems // 512))
            return (
                "row_fused", _row_fused_kernel, _cdiv(n_rows, rows),
                (n_rows, n, inner, s_o, s_i, s_n, so_o, so_i),
                dict(OP=OP, ROWS=rows, BLOCK_N=block_n, VEC=a, SHIFT=shift), warps, None,
                dict(rows=rows, block_n=block_n, warps=warps, VEC=a, SHIFT=shift),
            )  # fmt: skip
        warps = cfg["split_warps"]
        cw = min(cfg["split_cw"] or vec * 32 * warps, _pow2(cfg["split_tile_elems"]))
        kt = max(1, _pow2(cfg["split_tile_elems"]) // cw)
        tile = kt * cw
        span = n + a - 1  # grid elements a row may span
        # Chunks: at most chunk_max elements (few work items, so few tickets on the one
        # counter), but enough of them to give every SM a few programs in each phase when
        # there are few rows; at least chunk_min elements and one tile each.
        k = max(_cdiv(span, cfg["chunk_max"]), _cdiv(cfg["programs_per_sm"] * sms, n_rows))
        k = max(1, min(k, cfg["k_max"], _cdiv(span, cfg["chunk_min"]), _cdiv(span, tile)))
        chunk = _cdiv(_cdiv(span, k), tile) * tile
        k = _cdiv(span, chunk)
        lag = _lag(n * esize * inputs, n_rows, l2, cfg)
        items = n_rows * k * (1 if op == "logsumexp" else 2)
        return (
            "row_split", _row_split_kernel, items,
            (n_rows, n, inner, s_o, s_i, so_o, so_i, k, chunk, lag),
            dict(OP=OP, K=kt, CW=cw, KP=_pow2(k), VEC=a, **_hints(cfg)), warps, (n_rows, _pow2(k), 2),
            dict(k=k, chunk=chunk, lag=lag, K=kt, CW=cw, VEC=a, warps=warps),
        )  # fmt: skip
    # Column kernels: q runs along the unit-stride axis, p along the other one.
    if inner > 1 and s_i == 1:
        P, Q, s_p, s_q, so_p, so_q = outer, inner, s_o, s_i, inner, 1
    else:  # outer has unit stride (a transposed tensor)
        P, Q, s_p, s_q, so_p, so_q = inner, outer, s_i, s_o, 1, inner
    bq = min(_pow2(Q), cfg["col_bq"] or vec * 32)
    nqt = _cdiv(Q, bq)
    n_groups = P * nqt
    if _pow2(n) * bq <= cfg["col_fused_elems"]:
        bn = _pow2(n)
        warps = max(1, min(8, bn * bq // 512))
        return (
            "col_fused", _col_fused_kernel, n_groups, (n, Q, s_p, s_n, s_q, so_p, so_q, nqt),
            dict(OP=OP, BN=bn, BQ=bq), warps, None, dict(bn=bn, bq=bq, warps=warps),
        )  # fmt: skip
    tn = max(1, min(_pow2(n), cfg["col_tile_elems"] // bq))
    k = max(_cdiv(n * bq, cfg["col_chunk_min_elems"]), _cdiv(cfg["programs_per_sm"] * sms, n_groups))
    k = max(1, min(k, cfg["col_k_max"], _cdiv(n, tn)))
    chunk = _cdiv(_cdiv(n, k), tn) * tn
    k = _cdiv(n, chunk)
    kp = _pow2(k)
    lag = _lag(n * bq * esize * inputs, n_groups, l2, cfg)
    items = n_groups * k * (1 if op == "logsumexp" else 2)
    warps = max(1, min(8, tn * bq // 512))
    return (
        "col_split", _col_split_kernel, items,
        (n, Q, s_p, s_n, s_q, so_p, so_q, n_groups, nqt, k, chunk, lag),
        dict(OP=OP, TN=tn, BQ=bq, KP=kp, **_hints(cfg)), warps, (n_groups, kp, 2, bq),
        dict(k=k, chunk=chunk, lag=lag, tn=tn, bq=bq, warps=warps),
    )  # fmt: skip


def _softmax_forward(
    x: torch.Tensor,
    dim: int = -1,
    log: bool = False,
    *,
    out: torch.Tensor | None = None,
    cfg: dict[str, Any] | None = None,
):
    """softmax (log=False) or log_softmax (log=True) of x over `dim`; same dtype and shape,
    and x's strides when x is dense. Float32 arithmetic inside.

    out: optional result tensor (same shape and dtype as x; may be x itself: every kernel
    reads a chunk before it writes it, and a row is only written after all of it was read
    for its reduction). With other strides than x, the result goes through a temporary."""
    name = "twopass.triton.log_softmax" if log else "twopass.triton.softmax"
    _check(x, name)
    cfg = _config(cfg)
    if out is not None:
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"{name}: out must have x's shape, dtype and device")
    if x.dim() == 0:
        y = _softmax_forward(x.reshape(1), 0, log, cfg=cfg).reshape(())
        return y if out is None else out.copy_(y)
    dim = _norm_dim(dim, x.dim(), name)
    if x.numel() == 0:
        return torch.empty_like(x) if out is None else out
    x, lay = _prepare(x, dim)
    direct = out is not None and out.stride() == x.stride()
    y = out if direct else torch.empty_like(x)
    _run("log_softmax" if log else "softmax", x, None, y, lay, None, cfg)
    if out is not None and not direct:
        return out.copy_(y)
    return y


def _softmax_backward(
    grad: torch.Tensor, y: torch.Tensor, dim: int = -1, log: bool = False, *, cfg: dict[str, Any] | None = None
):
    """Gradient wrt the input of softmax (log=False): y * (g - sum(g * y)), or of
    log_softmax (log=True): g - exp(y) * sum(g); y is the forward's output."""
    name = "twopass.triton.log_softmax_backward" if log else "twopass.triton.softmax_backward"
    _check(y, name)
    _check(grad, name)
    if grad.shape != y.shape:
        raise ValueError(f"{name}: grad has shape {tuple(grad.shape)}, output {tuple(y.shape)}")
    cfg = _config(cfg)
    if y.dim() == 0:
        return _softmax_backward(grad.reshape(1), y.reshape(1), 0, log, cfg=cfg).reshape(())
    dim = _norm_dim(dim, y.dim(), name)
    if y.numel() == 0:
        return torch.empty_like(y)
    y, lay = _prepare(y, dim)
    grad = _same_layout(y, grad)
    dx = torch.empty_like(y, dtype=grad.dtype) if grad.dtype != y.dtype else torch.empty_like(y)
    _run("log_softmax_bwd" if log else "softmax_bwd", y, grad, dx, lay, None, cfg)
    return dx
