"""Fused cross-entropy (loss, lse and gradient) for CUDA tensors, in Triton.

The definition (options, reduction, gradient, special values) is `docs/cross_entropy.md`;
this module computes its per-row quantities. The autograd wrapper
(`twopass.torch.cross_entropy`) reduces the rows and computes the scales on the device.

    cross_entropy_forward(logits, target, weight, scale, *, ignore_index=-100,
                          label_smoothing=0.0, z_loss=0.0, softcap=None, grad=None)
        -> (ce_rows, z_rows, lse)
    scale_grad_(grad, g)      grad *= g in place (g 0-d, or one value per row)

HBM traffic (N rows of C logits of E bytes; the per-row vectors are small):

- `cross_entropy_forward(..., grad=None)`: 1R of the logits. One pass over a row gives the
  running (max, sum of exp) pair, the target logit and the weighted sum of the logits that
  label smoothing needs; nothing else is read or written per element.
- `cross_entropy_forward(..., grad=g)`: 1R + 1W (N*C*E read, N*C*E written) when the second
  read of each row is served by L2, else 2R + 1W. The gradient with upstream gradient 1 is
  written in a second pass that reads the row again; the launcher spaces the two reads of a
  row by a bounded amount of other traffic (see "split" below) so that the second one hits
  L2. `grad` may be the logits tensor itself (in place): same traffic, no second N*C buffer.
  With both class weights and label smoothing, each pass also reads w_j per element, from L2
  (C floats shared by all rows), not from HBM.
- `scale_grad_(grad, g)`: nothing when g is a scalar equal to 1 (the kernel reads g on the
  device and returns at once: no host sync, no pass), else 1R + 1W of grad; per-row g skips
  the rows whose g_i is 1.

Kernels and work division (`_ce_kernel`, two modes chosen by the launcher, `cfg["split"]`):

- row mode (SPLIT=0): one program per row, looping over the row in tiles of [K, CW]: pass 1,
  then the row's results, then (with a gradient) pass 2 over the same row. No atomics, no
  workspace. The reuse distance between a row's two reads is (programs resident on the whole
  GPU) x (row bytes): 132 SMs x 2 programs x 256 KB (a bf16 row of 128K) is already more
  than the 50 MB of an H100's L2, so this mode is the default only for the forward. Rows
  shorter than a tile get a smaller tile (fewer warps), still one row per program: fine from
  a few thousand classes up (the vocabularies this is for), wasteful for tiny C.
- split mode (SPLIT=1): a row is cut into k chunks; each chunk is a work item of phase 0
  (pass 1 over the chunk, its partial state written to a small workspace) and of phase 1
  (merge the row's k partial states, pass 2 over the chunk). Programs take items from a ticket
  counter in the order they start; the order interleaves phase 0 of row r + lag with phase 1
  of row r, `lag` rows filling `l2_fraction` of L2, so a chunk is read again after a bounded
  amount of traffic, whatever the number of resident programs (phase-0 loads carry
  evict_last, phase-1 loads and stores evict_first). Phase 1 of a row waits only for phase-0
  items with earlier tickets, i.e. programs already running: no deadlock (the scheme of
  `softmax._row_split_kernel`, whose `_decode`, `_wait` and `_publish` it shares, from
  `_common.py`). Without a gradient only phase 0 runs and the row's last chunk to finish
  merges and writes the row's results (used when there are too few rows to fill the GPU
  with one program per row).
  The ticket and arrival counters are the only atomics; partial states are merged in chunk
  order, so results are bitwise reproducible.

Pass 1 keeps, per column lane of the tile (CW lanes, each seeing C / CW elements), the online
pair (m, s) = (running max, sum exp(x' - m)) in float32, rescaled once per tile of K rows (one
exp per element plus one per K), not the (mantissa, exponent) pair of the CPU kernels: on
the GPU exp is one ex2.approx, while the pair needs exponent extraction and scaling by
2^k from bit fields (no vscalefps), and the max is wanted anyway (label smoothing's sum is
kept relative to it, below). The lanes are merged at the end by a tree (tl.sum), so a sum
over 256K elements is 256 sequential additions per lane plus log2(CW) levels: a few ulp.
The label-smoothing sum is kept as sw = sum_j w_j (x'_j - m) with the same running max
(sw += (m_old - m_new) * sum w when the max grows) and W = sum_j w_j (both also merged
across chunks), so that
W * lse - sum_j w_j x'_j = W * log(s) - sw has no cancellation when the logits share a
large offset and no overflow on rows of huge equal values. The target logit is read once
(a scalar load, before any gradient can overwrite it in place: in row mode before pass 1,
with a barrier before pass 2; in split mode in phase 0, kept in a workspace for phase 1).

Pass 2 recomputes p_j = exp2((x'_j - m) * log2(e) - log2(s)) and writes
dx_j = (A * p_j - B * w_j - [j == t] * T) * (1 - tanh(x_j / c)^2 if soft-capping),
with A = s_ce ((1 - eps) w_t + eps W / C) + 2 s_z zc lse, B = s_ce eps / C,
T = s_ce (1 - eps) w_t (docs/cross_entropy.md, "Gradient").

Soft-capping x' = c tanh(x / c) uses `_tanh`, built from exp2 so that it also runs under the
interpreter: 1 - q, q = 2 / (exp(2|y|) + 1), for |y| >= 0.55, an odd polynomial below (where
that form cancels); its derivative 1 - tanh^2 is q (2 - q) there, accurate where tanh
saturates. exp is tl.exp2(x * log2(e)) (ex2.approx on the GPU); log is libdevice's logf.

Special values (docs/cross_entropy.md; they follow from IEEE arithmetic on x'): a NaN in a
row, or +inf, gives ce NaN and a NaN gradient row; a row of all -inf gives ce NaN; -inf at the
target of a finite row gives ce +inf; -inf elsewhere gives +inf when label_smoothing > 0
(NaN where its class weight is 0, as torch: 0 * -inf).
lse is +inf for a row with +inf, -inf for an all -inf row, NaN for a NaN row. Ignored rows
(target == ignore_index) give ce = z = 0 and a zero gradient row (NaN logits there too); any
other target outside [0, C) gives ce NaN and a NaN gradient row (no host-side check). Huge
finite values do not overflow (only differences x' - max are exponentiated), except that with
label smoothing a row spanning more than FLT_MAX (x' - max < -FLT_MAX) gives +inf, as torch's
float32 log_softmax does.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._common import _LOG2E, _NEG_BIG, _decode, _local, _lse_of, _max_nan, _publish, _to, _wait
from ._launch import _cdiv, _check, _device_caps, _hints, _lag, _launch_kernel, _merged_config, _pow2, _trace

__all__ = ["cross_entropy_forward", "scale_grad_"]

_TWO_LOG2E = tl.constexpr(2.8853900817779268)  # 2 * log2(e)
# tanh(y) = y + y^3 q(y^2) on |y| < 0.55: near-minimax fit of the relative error (Lawson),
# at most 1.1 ulp in float32 arithmetic.
_TANH_Q0 = tl.constexpr(-0.33333316445350647)
_TANH_Q1 = tl.constexpr(0.13332585990428925)
_TANH_Q2 = tl.constexpr(-0.05385230854153633)
_TANH_Q3 = tl.constexpr(0.021071678027510643)
_TANH_Q4 = tl.constexpr(-0.006274236366152763)


# ----------------------------------------------------------------------------------
# Pieces of the kernel.
# ----------------------------------------------------------------------------------
@triton.jit
def _tanh(y):
    """(tanh(y), 1 - tanh(y)^2), each to a few ulp (relative), also where tanh saturates."""
    # |y| >= 0.55: tanh = 1 - q with q = 2 / (e^{2|y|} + 1), no overflow (e = inf gives q = 0);
    # the result is >= 0.5 there, so q's error stays relative; 1 - tanh^2 = q (2 - q) keeps its
    # relative accuracy as q -> 0 (1 - t*t would cancel). Below 0.55 a polynomial (no cancellation).
    a = tl.abs(y)
    q = 2.0 / (tl.exp2(a * _TWO_LOG2E) + 1.0)
    s = y * y
    p = y + y * s * (_TANH_Q0 + s * (_TANH_Q1 + s * (_TANH_Q2 + s * (_TANH_Q3 + s * _TANH_Q4))))
    small = a < 0.55  # False for NaN, which stays NaN through q
    th = tl.where(small, p, tl.where(y < 0, q - 1.0, 1.0 - q))
    return th, tl.where(small, 1.0 - p * p, q * (2.0 - q))


@triton.jit
def _shift(sw, w, dm):
    # sum w (x - m) -> sum w (x - m') = sw + (m - m') * sum w; nothing when sum w is 0 (the
    # initial state, where m - m' may be -inf: 0 * inf would be NaN).
    return sw + tl.where(w == 0.0, 0.0, dm * w)


@triton.jit
def _pass1(
    Xr,
    Wr,
    lo,
    start,
    chunk,
    n,
    cap,
    inv_cap,
    CAP: tl.constexpr,
    SMOOTH: tl.constexpr,
    WEIGHT: tl.constexpr,
    K: tl.constexpr,
    CW: tl.constexpr,
    VEC: tl.constexpr,
    POLICY: tl.constexpr,
):
    """(max, sum exp(x' - max), sum w (x' - max), sum w) over the row's grid elements
    [start, start + chunk). Xr: the row's grid origin (class j at grid index lo + j), Wr: the
    weights shifted the same way. Loads cover whole 16-byte vectors (see _row_bounds)."""
    Xc = Xr + start
    Wc = Wr + start
    # (no `_` for the unused bounds: the loop below assigns `_` a tensor, and Triton keeps
    # one type per name across a loop)
    v_lo, v_hi, ld_hi, st_lo_unused, st_hi_unused = _row_bounds(lo, n, start, chunk, VEC)
    tile = tl.arange(0, K)[:, None] * CW + tl.arange(0, CW)[None, :]
    m = tl.full([CW], _NEG_BIG, tl.float32)  # -FLT_MAX, not -inf: no inf - inf on all -inf lanes
    s = tl.zeros([CW], tl.float32)
    sw = tl.zeros([CW], tl.float32)
    wl = tl.zeros([CW], tl.float32)
    for j in range(0, chunk, K * CW):
        lt = j + tile
        x = tl.load(Xc + lt, mask=lt < ld_hi, other=float("-inf"), eviction_policy=POLICY).to(tl.float32)
        msk = (lt >= v_lo) & (lt < v_hi)
        if CAP:
            th, _ = _tanh(x * inv_cap)
            x = tl.where(msk, cap * th, float("-inf"))
        elif VEC > 1:
            x = tl.where(msk, x, float("-inf"))
        # A thread holds K elements of each of its columns: this max and sum stay in registers.
        m_new = _max_nan(m, tl.reduce(x, 0, _max_nan))
        d = x - m_new[None, :]
        s = s * tl.exp2((m - m_new) * _LOG2E) + tl.sum(tl.exp2(d * _LOG2E), 0)
        if SMOOTH:
            if WEIGHT:
                w = tl.load(Wc + lt, mask=msk, other=0.0)
                wd = tl.where(msk, w * d, 0.0)
            else:
                w = msk.to(tl.float32)
                wd = tl.where(msk, d, 0.0)
            sw = _shift(sw, wl, m - m_new) + tl.sum(wd, 0)
            wl += tl.sum(w, 0)
        m = m_new
    pm = tl.reduce(m, 0, _max_nan)
    ps = tl.sum(s * tl.exp2((m - pm) * _LOG2E), 0)
    psw = tl.sum(_shift(sw, wl, m - pm), 0)
    pw = tl.sum(wl, 0)
    return pm, ps, psw, pw


@triton.jit
def _row_bounds(lo, n, start, chunk, VEC: tl.constexpr):
    """Chunk-local bounds of a row held at grid indices [lo, lo + n), lo < VEC, on the 16-byte
    grid (VEC elements per vector; VEC = 1 and lo = 0 when the launcher cannot align): the
    row's elements [v_lo, v_hi); the whole vectors to load, [0, ld_hi) (never past the 16-byte
    block of a row element, so never a fault; the other rows' elements are masked out after
    the load); the whole vectors to store, [st_lo, st_hi) (the partial vectors at the row's
    ends are stored apart). A row of odd length (a vocabulary of 50257) so gets 16-byte
    accesses, which Triton proves only from divisibility."""
    hi = lo + n
    v_lo = _local(lo, start, chunk)
    v_hi = _local(hi, start, chunk)
    ld_hi = tl.multiple_of(_local((hi + VEC - 1) // VEC * VEC, start, chunk), VEC)
    st_lo = tl.multiple_of(_local((lo + VEC - 1) // VEC * VEC, start, chunk), VEC)
    st_hi = tl.multiple_of(_local(hi // VEC * VEC, start, chunk), VEC)
    return v_lo, v_hi, ld_hi, st_lo, st_hi


@triton.jit
def _merge(PART, row64, k, KP: tl.constexpr):
    """The row's k partial states (chunk order, so the result does not depend on timing).
    The loads bypass L1 (.cg): other SMs wrote them."""
    kk = tl.arange(0, KP)
    slot = PART + (row64 * KP + kk) * 4
    pmask = kk < k
    pms = tl.load(slot, mask=pmask, other=_NEG_BIG, cache_modifier=".cg")
    pss = tl.load(slot + 1, mask=pmask, other=0.0, cache_modifier=".cg")
    psw = tl.load(slot + 2, mask=pmask, other=0.0, cache_modifier=".cg")
    pws = tl.load(slot + 3, mask=pmask, other=0.0, cache_modifier=".cg")
    M = tl.reduce(pms, 0, _max_nan)
    S = tl.sum(pss * tl.exp2((pms - M) * _LOG2E), 0)
    SW = tl.sum(_shift(psw, pws, pms - M), 0)
    W = tl.sum(pws, 0)
    return M, S, SW, W


@triton.jit
def _target_logit(X, xbase, t, m, cap, inv_cap, CAP: tl.constexpr):
    xt = tl.load(X + xbase + t, mask=m, other=0.0).to(tl.float32)
    if CAP:
        th, _ = _tanh(xt * inv_cap)
        xt = cap * th
    return xt


@triton.jit
def _finish(M, S, SW, W, xt, wt, ign, one_m_eps, eps_c, zc, SMOOTH: tl.constexpr, ZLOSS: tl.constexpr):
    """Row results from the merged state: (ce, z, lse to report, lse for the maths, log S)."""
    log_s = tl.log(S)
    # lse - x'_t as (M - x'_t) + log S: exact cancellation when x'_t is the max, even when
    # M is huge (M + log S would absorb log S). S is NaN on a row with +inf, so is ce.
    ce = one_m_eps * wt * ((M - xt) + log_s)
    if SMOOTH:
        ce += eps_c * (W * log_s - SW)
    lse = M + log_s  # for the gradient: NaN on a row with +inf, as the loss
    lse_out = _lse_of(M, S)  # +inf on a row with +inf, -inf on an all -inf row
    if ZLOSS:
        z = zc * lse_out * lse_out
    else:
        z = tl.zeros_like(lse)
    ce = tl.where(ign, 0.0, ce)
    z = tl.where(ign, 0.0, z)
    return ce, z, lse_out, lse, log_s


@triton.jit
def _grad_values(
    Xc, Wc, lt, ld_mask, msk, t_loc, M, log2_s, A, B, T1, ign, cap, inv_cap,
    CAP: tl.constexpr, SMOOTH: tl.constexpr, WEIGHT: tl.constexpr, POLICY: tl.constexpr,
):  # fmt: skip
    """dx at chunk-local indices lt (t_loc: the target's, or -1)."""
    x = tl.load(Xc + lt, mask=ld_mask, other=0.0, eviction_policy=POLICY).to(tl.float32)
    if CAP:
        th, dth = _tanh(x * inv_cap)
        x = cap * th
    p = tl.exp2((x - M) * _LOG2E - log2_s)  # x' - M exact near the max, even for huge M
    dx = A * p
    if SMOOTH:
        if WEIGHT:
            dx -= B * tl.load(Wc + lt, mask=msk, other=0.0)
        else:
            dx -= B
    dx = tl.where(lt == t_loc, dx - T1, dx)
    if CAP:
        dx = dx * dth  # d(c tanh(x/c))/dx
    return tl.where(ign, 0.0, dx)  # ignored rows: 0, even where the logits are NaN


@triton.jit
def _pass2(
    Xr,
    DXr,
    Wr,
    lo,
    start,
    chunk,
    n,
    t,
    M,
    log2_s,
    A,
    B,
    T1,
    ign,
    cap,
    inv_cap,
    CAP: tl.constexpr,
    SMOOTH: tl.constexpr,
    WEIGHT: tl.constexpr,
    K: tl.constexpr,
    CW: tl.constexpr,
    VEC: tl.constexpr,
    POLICY: tl.constexpr,
):
    """dx over the row's grid elements [start, start + chunk) (DXr: the gradient row's grid
    origin, on the same grid as Xr): each tile is read before it is written (in place is safe)."""
    Xc = Xr + start
    DXc = DXr + start
    Wc = Wr + start
    v_lo, v_hi, ld_hi, st_lo, st_hi = _row_bounds(lo, n, start, chunk, VEC)
    t_loc = tl.minimum(tl.maximum(t + lo - start, -1), chunk).to(tl.int32)  # -1 or chunk: not here
    tile = tl.arange(0, K)[:, None] * CW + tl.arange(0, CW)[None, :]
    for j in range(0, chunk, K * CW):
        lt = j + tile
        msk = (lt >= v_lo) & (lt < v_hi)
        dx = _grad_values(
            Xc, Wc, lt, lt < ld_hi, msk, t_loc, M, log2_s, A, B, T1, ign, cap, inv_cap, CAP, SMOOTH, WEIGHT, POLICY
        )
        tl.store(DXc + lt, _to(dx, DXc), mask=(lt >= st_lo) & (lt < st_hi), eviction_policy=POLICY)
    if VEC > 1:  # the partial vectors at the row's ends (empty in most chunks)
        ea = tl.arange(0, VEC)
        for end in tl.static_range(2):
            if end == 0:
                lt = v_lo + ea
                msk = lt < tl.minimum(st_lo, v_hi)
            else:
                lt = tl.maximum(st_hi, st_lo) + ea
                msk = lt < v_hi
            dx = _grad_values(
                Xc, Wc, lt, msk, msk, t_loc, M, log2_s, A, B, T1, ign, cap, inv_cap, CAP, SMOOTH, WEIGHT, POLICY
            )
            tl.store(DXc + lt, _to(dx, DXc), mask=msk, eviction_policy=POLICY)


# ----------------------------------------------------------------------------------
# The kernel.
# ----------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["n_rows", "k", "lag", "ignore_index"])
def _ce_kernel(
    X,  # logits (N, C), class stride 1
    T,  # targets (N,), int64 or int32
    Wt,  # class weights (C,) float32 (WEIGHT)
    SC,  # [s_ce, s_z] float32 (GRAD)
    DX,  # gradient (N, C), class stride 1 (GRAD); may be X
    CE,  # (N,) float32 results
    Z,
    LSE,
    PART,  # float32 [N, KP, 4]: per chunk (max, sum exp, sum w(x' - max), sum w) (SPLIT)
    XT,  # float32 [N]: x'_t, written by the chunk holding t (SPLIT)
    CNT,  # int32 [1 + N]: the ticket counter, then one arrival counter per row (SPLIT)
    n_rows,
    n,
    s_x,
    s_dx,
    ignore_index,
    one_m_eps,  # 1 - label_smoothing
    eps_c,  # label_smoothing / C
    zc,
    cap,
    inv_cap,
    k,  # chunks per row (SPLIT)
    chunk,  # elements per chunk, a multiple of K * CW (row mode: the row rounded up)
    lag,  # rows between a row's phase 0 and its phase 1 (SPLIT and GRAD)
    SPLIT: tl.constexpr,
    GRAD: tl.constexpr,
    WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    ZLOSS: tl.constexpr,
    CAP: tl.constexpr,
    K: tl.constexpr,
    CW: tl.constexpr,
    KP: tl.constexpr,
    VEC: tl.constexpr,  # elements per 16-byte access (rows on the aligned grid), or 1 (see _row_bounds)
    P1: tl.constexpr,  # L2 policy of pass-1 loads ("evict_last" when pass 2 follows)
    P2: tl.constexpr,  # of pass-2 loads and stores ("evict_first")
):
    if SPLIT:
        tk = tl.atomic_add(CNT, 1)  # a ticket: items are taken in the order programs start
        u = tk // k
        c = tk - u * k
        if GRAD:
            phase, row = _decode(u, n_rows, lag)
        else:
            phase = 0
            row = u
    else:
        row = tl.program_id(0)
        c = 0
        phase = 0
    row64 = row.to(tl.int64)
    t = tl.load(T + row64).to(tl.int64)
    ign = t == ignore_index
    valid = (t >= 0) & (t < n) & (t != ignore_index)
    if WEIGHT:
        wt = tl.load(Wt + t, mask=valid, other=0.0)
    else:
        wt = 1.0
    # w_t: 0 on ignored rows, NaN for a target out of range (loss and gradient NaN).
    wt = tl.where(valid, wt, tl.where(ign, 0.0, float("nan")))
    xbase = row64 * s_x
    # The row on the 16-byte grid (_row_bounds): class j at grid index lo + j. The gradient
    # has the logits' row stride when VEC > 1 (the launcher checks), so the same lo.
    lo = xbase % VEC
    Xr = X + tl.multiple_of(xbase - lo, VEC)
    DXr = DX + tl.multiple_of(row64 * s_dx - lo, VEC)
    Wr = Wt - lo
    if SPLIT:
        start = c.to(tl.int64) * chunk
        if phase == 0:
            pm, ps, psw, pw = _pass1(Xr, Wr, lo, start, chunk, n, cap, inv_cap, CAP, SMOOTH, WEIGHT, K, CW, VEC, P1)
            mine = valid & (t + lo >= start) & (t + lo < start + chunk)
            tl.store(XT + row64, _target_logit(X, xbase, t, mine, cap, inv_cap, CAP), mask=mine)
            slot = PART + (row64 * KP + c) * 4
            tl.store(slot, pm)
            tl.store(slot + 1, ps)
            tl.store(slot + 2, psw)
            tl.store(slot + 3, pw)
            before = _publish(CNT + 1 + row64)
            if not GRAD:
                if before == k - 1:  # the row's last chunk: merge, write the row's results
                    M, S, SW, W = _merge(PART, row64, k, KP)
                    xt = tl.load(XT + row64, mask=valid, other=0.0, cache_modifier=".cg")
                    ce, z, lse_out, lse, log_s = _finish(M, S, SW, W, xt, wt, ign, one_m_eps, eps_c, zc, SMOOTH, ZLOSS)
                    tl.store(CE + row64, ce)
                    tl.store(Z + row64, z)
                    tl.store(LSE + row64, lse_out)
        else:
            _wait(CNT + 1 + row64, k)
            M, S, SW, W = _merge(PART, row64, k, KP)
            xt = tl.load(XT + row64, mask=valid, other=0.0, cache_modifier=".cg")
            ce, z, lse_out, lse, log_s = _finish(M, S, SW, W, xt, wt, ign, one_m_eps, eps_c, zc, SMOOTH, ZLOSS)
            if c == 0:
                tl.store(CE + row64, ce)
                tl.store(Z + row64, z)
                tl.store(LSE + row64, lse_out)
            s_ce = tl.load(SC)
            A = s_ce * one_m_eps * wt
            if SMOOTH:
                A += s_ce * eps_c * W
            if ZLOSS:
                A += tl.load(SC + 1) * 2.0 * zc * lse
            _pass2(
                Xr, DXr, Wr, lo, start, chunk, n, t, M, log_s * _LOG2E, A, s_ce * eps_c,
                s_ce * one_m_eps * wt, ign, cap, inv_cap, CAP, SMOOTH, WEIGHT, K, CW, VEC, P2,
            )  # fmt: skip
    else:
        # x_t first: in place, pass 2 of another warp may overwrite it once pass 1 is done.
        xt = _target_logit(X, xbase, t, valid, cap, inv_cap, CAP)
        M, S, SW, W = _pass1(Xr, Wr, lo, 0, chunk, n, cap, inv_cap, CAP, SMOOTH, WEIGHT, K, CW, VEC, P1)
        ce, z, lse_out, lse, log_s = _finish(M, S, SW, W, xt, wt, ign, one_m_eps, eps_c, zc, SMOOTH, ZLOSS)
        tl.store(CE + row64, ce)
        tl.store(Z + row64, z)
        tl.store(LSE + row64, lse_out)
        if GRAD:
            tl.debug_barrier()  # every thread's pass-1 and x_t loads are done before any store
            s_ce = tl.load(SC)
            A = s_ce * one_m_eps * wt
            if SMOOTH:
                A += s_ce * eps_c * W
            if ZLOSS:
                A += tl.load(SC + 1) * 2.0 * zc * lse
            _pass2(
                Xr, DXr, Wr, lo, 0, chunk, n, t, M, log_s * _LOG2E, A, s_ce * eps_c,
                s_ce * one_m_eps * wt, ign, cap, inv_cap, CAP, SMOOTH, WEIGHT, K, CW, VEC, P2,
            )  # fmt: skip


@triton.jit
def _scale_row(DX, OUT, base, obase, n, g, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    for j in range(0, n, BLOCK):
        idx = j + cols
        msk = idx < n
        v = tl.load(DX + base + idx, mask=msk, other=0.0, eviction_policy="evict_first").to(tl.float32)
        tl.store(OUT + obase + idx, _to(v * g, OUT), mask=msk, eviction_policy="evict_first")


@triton.jit(do_not_specialize=["n_rows", "nprog"])
def _scale_kernel(
    DX, OUT, G, n_rows, n, s_dx, s_out, nprog, PER_ROW: tl.constexpr, COPY: tl.constexpr, BLOCK: tl.constexpr
):
    # A fixed grid striding over the rows (nprog <= n_rows). In place (not COPY), a row whose
    # g is 1 is left alone: when the loss was reduced and g == 1, every program returns after
    # one load. COPY (OUT = DX * g, another tensor) writes every row.
    pid = tl.program_id(0).to(tl.int64)
    n_iter = (n_rows - 1 - pid) // nprog + 1
    if PER_ROW:
        for i in range(0, n_iter):
            row = pid + i * nprog
            g = tl.load(G + row).to(tl.float32)
            if COPY or g != 1.0:
                _scale_row(DX, OUT, row * s_dx, row * s_out, n, g, BLOCK)
    else:
        g = tl.load(G).to(tl.float32)
        if COPY or g != 1.0:  # the common training step (loss.backward() of a mean or sum): no pass
            for i in range(0, n_iter):
                row = pid + i * nprog
                _scale_row(DX, OUT, row * s_dx, row * s_out, n, g, BLOCK)


# ----------------------------------------------------------------------------------
# Launchers.
# ----------------------------------------------------------------------------------
# Tuning knobs; `cfg=` on each launcher overrides them (the tests shrink the tiles and chunks
# so that every path runs on small shapes; `python -m twopass bench --cross-entropy
# --device cuda --sweep` tries others).
DEFAULTS: dict[str, Any] = {
    "split": None,  # None: split mode with a gradient or when rows are too few; True / False force
    "warps": 8,
    "tile_elems": 8192,  # K * CW: elements per tile (per loop iteration of a program)
    "cw": None,  # columns of a tile; None: 16 bytes * 32 lanes * warps (one 16-byte access each)
    "chunk_min": 16384,  # split mode: elements per chunk at least
    "chunk_max": 65536,  # split mode: elements per chunk at most, when the rows alone fill the GPU
    "k_max": 64,  # split mode: chunks per row at most
    "programs_per_sm": 4,  # split mode: chunks enough for this many programs per SM and phase
    "l2_fraction": 0.25,  # split mode: data read between a row's two phases, as a fraction of L2
    "l2_hints": True,  # eviction-priority hints (pass 1 evict_last, pass 2 evict_first)
    "scale_block": 4096,  # scale_grad_: elements per tile
    "scale_programs_per_sm": 8,  # scale_grad_: programs per SM (a grid-stride loop over rows)
    "num_sms": None,  # None: from the device (interpreter: 132)
    "l2_bytes": None,  # None: from the device (interpreter: 50 MB)
}


def _config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    return _merged_config(cfg, DEFAULTS)


def _tile(n: int, esize: int, cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(K, CW, warps): CW lanes of 16-byte accesses across the warps, K rows per tile; shrunk
    (fewer warps) for rows shorter than a tile."""
    vec = 16 // esize
    tile = _pow2(cfg["tile_elems"])
    cw = min(cfg["cw"] or vec * 32 * cfg["warps"], tile, _pow2(n))
    kt = max(1, min(tile // cw, _pow2(n) // cw))
    warps = max(1, min(cfg["warps"], cw // (vec * 32)))
    return kt, cw, warps


def _plan(n_rows: int, n: int, esize: int, grad: bool, cfg: dict[str, Any], x: torch.Tensor, vec: int):
    """Launch parameters: mode, tile, chunks, lag. vec: elements per 16-byte vector of the
    aligned grid (a row spans up to vec - 1 more grid elements than classes), or 1."""
    span = n + vec - 1
    kt, cw, warps = _tile(n, esize, cfg)
    tile = kt * cw
    sms, l2 = _device_caps(x, cfg)
    few_rows = n_rows < cfg["programs_per_sm"] * sms
    split = cfg["split"]
    if split is None:
        split = grad or (few_rows and n >= 2 * cfg["chunk_min"])
    if not split:
        chunk = _cdiv(span, tile) * tile
        return dict(split=False, K=kt, CW=cw, VEC=vec, warps=warps, k=1, chunk=chunk, lag=1)
    # Chunks: at most chunk_max elements (8192 x 128256 with a gradient: 32768 work items on
    # the one ticket counter, not 131072), but enough to give every SM a few programs per
    # phase when there are few rows; at least chunk_min elements and one tile each.
    k = max(_cdiv(span, cfg["chunk_max"]), _cdiv(cfg["programs_per_sm"] * sms, n_rows))
    k = max(1, min(k, cfg["k_max"], _cdiv(span, cfg["chunk_min"]), _cdiv(span, tile)))
    chunk = _cdiv(_cdiv(span, k), tile) * tile
    k = _cdiv(span, chunk)
    lag = _lag(n * esize, n_rows, l2, cfg)
    return dict(split=True, K=kt, CW=cw, VEC=vec, warps=warps, k=k, chunk=chunk, lag=lag)


def cross_entropy_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    scale: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad: torch.Tensor | None = None,
    cfg: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy terms of docs/cross_entropy.md, and optionally the gradient.

    logits: (N, C) float32/float16/bfloat16, class stride 1, any row stride. target: (N,)
    int64 or int32. weight: (C,) float32 or None. scale: float32 [s_ce, s_z] on the device
    (read only with grad; the caller computes them on the device, no host sync).
    grad: None (one pass over the logits), or an (N, C) tensor of the logits' dtype with class
    stride 1, possibly `logits` itself, into which the gradient for an upstream gradient of 1
    is written (a second pass per row).

    Returns (ce_rows, z_rows, lse), each (N,) float32: ce (0 on ignored rows, NaN where the
    target is out of range), z = z_loss * lse^2 (0 on ignored rows), lse of the soft-capped
    logits (computed for ignored rows too)."""
    name = "twopass.triton.cross_entropy"
    _check(logits, name)
    cfg = _config(cfg)
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be (N, C), got shape {tuple(logits.shape)}")
    n_rows, n = logits.shape
    if n == 0:
        raise ValueError(f"{name}: no classes (C = 0)")
    if logits.stride(1) != 1 and n > 1:
        raise ValueError(f"{name}: logits must have class stride 1, got strides {logits.stride()}")
    dev = logits.device
    if target.shape != (n_rows,) or target.dtype not in (torch.int64, torch.int32) or target.device != dev:
        raise ValueError(f"{name}: target must be ({n_rows},) int64 or int32 on {dev}")
    if weight is not None and (weight.shape != (n,) or weight.dtype != torch.float32 or weight.device != dev):
        raise ValueError(f"{name}: weight must be ({n},) float32 on {dev}")
    if scale.numel() != 2 or scale.dtype != torch.float32 or scale.device != dev:
        raise ValueError(f"{name}: scale must hold 2 float32 values (s_ce, s_z) on {dev}")
    if grad is not None:
        if grad.shape != logits.shape or grad.dtype != logits.dtype or grad.device != dev:
            raise ValueError(f"{name}: grad must have the logits' shape, dtype and device")
        if grad.stride(1) != 1 and n > 1:
            raise ValueError(f"{name}: grad must have class stride 1, got strides {grad.stride()}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if not z_loss >= 0.0:
        raise ValueError(f"{name}: z_loss must be >= 0, got {z_loss}")
    if softcap is not None and not softcap > 0.0:
        raise ValueError(f"{name}: softcap must be > 0 or None, got {softcap}")
    f32 = dict(dtype=torch.float32, device=dev)
    ce, z, lse = (torch.empty(n_rows, **f32) for _ in range(3))
    if n_rows == 0:
        return ce, z, lse
    target = target.contiguous()
    weight = weight.contiguous() if weight is not None else None
    scale = scale.contiguous().view(2)
    # The aligned grid when both rows start at the same offset from a 16-byte boundary.
    aligned = logits.data_ptr() % 16 == 0 and (
        grad is None or (grad.data_ptr() % 16 == 0 and grad.stride(0) == logits.stride(0))
    )
    vec = 16 // logits.element_size() if aligned and (logits.stride(1) == 1 or n == 1) else 1
    plan = _plan(n_rows, n, logits.element_size(), grad is not None, cfg, logits, vec)
    hints = _hints(cfg)
    has_grad = grad is not None
    if plan["split"]:
        kp = _pow2(plan["k"])
        part = torch.empty((n_rows, kp, 4), **f32)
        xt = torch.empty(n_rows, **f32)
        cnt = torch.zeros(1 + n_rows, dtype=torch.int32, device=dev)
        grid = n_rows * plan["k"] * (2 if has_grad else 1)
    else:
        kp, part, xt, cnt, grid = 1, ce, ce, ce, n_rows  # unused pointers
    meta = dict(
        SPLIT=plan["split"],
        GRAD=has_grad,
        WEIGHT=weight is not None,
        SMOOTH=label_smoothing > 0.0,
        ZLOSS=z_loss > 0.0,
        CAP=softcap is not None,
        K=plan["K"],
        CW=plan["CW"],
        KP=kp,
        VEC=plan["VEC"],
        P1=hints["KEEP"] if has_grad else hints["DROP"],
        P2=hints["DROP"],
    )
    _trace("ce_split" if plan["split"] else "ce_row", **plan)
    cap = float(softcap) if softcap is not None else 1.0
    args = (
        logits, target, weight if weight is not None else ce, scale, grad if has_grad else logits,
        ce, z, lse, part, xt, cnt,
        n_rows, n, logits.stride(0), grad.stride(0) if has_grad else 0, int(ignore_index),
        1.0 - float(label_smoothing), float(label_smoothing) / n, float(z_loss), cap, 1.0 / cap,
        plan["k"], plan["chunk"], plan["lag"],
    )  # fmt: skip
    _launch_kernel(_ce_kernel, grid, args, meta, plan["warps"])
    return ce, z, lse


def scale_grad_(
    grad: torch.Tensor, g: torch.Tensor, *, out: torch.Tensor | None = None, cfg: dict[str, Any] | None = None
) -> torch.Tensor:
    """grad *= g in place and return grad; or, with `out`, out = grad * g (grad unchanged)
    and return out, in one pass (1R + 1W, no float32 temporary). grad and out: (N, C), class
    stride 1, the same dtype. g: a 0-d tensor (the upstream gradient of a "mean" or "sum"
    loss: read on the device; in place, g == 1 touches nothing) or (N,) (reduction "none":
    row i times g_i; in place, rows with g_i == 1 are skipped). Float32 arithmetic, one
    rounding to grad's dtype."""
    name = "twopass.triton.scale_grad_"
    _check(grad, name)
    cfg = _config(cfg)
    if grad.dim() != 2 or (grad.stride(1) != 1 and grad.shape[1] > 1):
        raise ValueError(f"{name}: grad must be (N, C) with class stride 1")
    n_rows, n = grad.shape
    if not isinstance(g, torch.Tensor) or g.device != grad.device or not g.is_floating_point():
        raise ValueError(f"{name}: g must be a floating-point tensor on {grad.device}")
    if g.dim() == 0:
        per_row = False
    elif g.shape == (n_rows,):
        per_row = True
    else:
        raise ValueError(f"{name}: g must be 0-d or ({n_rows},), got shape {tuple(g.shape)}")
    copy = out is not None and out is not grad
    if copy:
        _check(out, name)
        if out.shape != grad.shape or out.dtype != grad.dtype or (out.stride(1) != 1 and n > 1):
            raise ValueError(f"{name}: out must have grad's shape and dtype, with class stride 1")
    dst = out if copy else grad
    if grad.numel() == 0:
        return dst
    g = g.contiguous()
    sms, _ = _device_caps(grad, cfg)
    block = min(_pow2(n), _pow2(cfg["scale_block"]))
    nprog = max(1, min(n_rows, cfg["scale_programs_per_sm"] * sms))
    warps = max(1, min(8, block // 512))
    _trace("scale", per_row=per_row, copy=copy, block=block, nprog=nprog)
    _launch_kernel(
        _scale_kernel, nprog, (grad, dst, g, n_rows, n, grad.stride(0), dst.stride(0), nprog),
        dict(PER_ROW=per_row, COPY=copy, BLOCK=block), warps,
    )  # fmt: skip
    return dst
