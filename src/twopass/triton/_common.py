"""The @triton.jit helpers and constants that the kernels of several operations share
(softmax.py's softmax-family kernels, logsumexp.py's and cross_entropy.py's).

The reduction state of a row is the pair (m, s): m = max(x), s = sum(exp(x - m)).
`_decode`, `_wait` and `_publish` are the two-phase work scheme of the split kernels
(softmax.py's docstring describes it); `_lse_of` turns a merged pair into log(sum(exp)).
"""

from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)
_NEG_BIG = tl.constexpr(-3.4028234663852886e38)  # -FLT_MAX: start of a partial max


# ----------------------------------------------------------------------------------
# Pieces of the kernels.
# ----------------------------------------------------------------------------------
@triton.jit
def _max_nan(a, b):
    # max that propagates NaN (PTX max.NaN.f32): a NaN anywhere in the row reaches m.
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _to(v, P):
    # v in the element type of pointer P: round to nearest even on the GPU (cvt.rn);
    # Triton's interpreter truncates float32 -> bfloat16 instead (the tests allow for it).
    return v.to(P.dtype.element_ty)


@triton.jit
def _decode(u, n_groups, lag):
    """Work unit u -> (phase, group). Units: phase 0 of groups [0, lag), then pairs
    (phase 0 of group lag + j, phase 1 of group j), then phase 1 of the last lag groups.
    Phase 1 of a group always comes after its phase 0 (lag >= 1)."""
    v = u - lag
    n_pairs = n_groups - lag
    in_pairs = v < 2 * n_pairs
    odd = (v % 2) == 1
    phase = tl.where(u < lag, 0, tl.where(in_pairs, tl.where(odd, 1, 0), 1))
    group = tl.where(u < lag, u, tl.where(in_pairs, tl.where(odd, v // 2, v // 2 + lag), v - n_pairs))
    return phase, group


@triton.jit
def _wait(counter, k):
    # Spin until the k phase-0 items of this group have published their pairs. The
    # atomic runs on one thread with acquire semantics; the barrier orders every thread's
    # next loads after it, and those loads bypass L1 (.cg), which is not coherent.
    while tl.atomic_add(counter, 0, sem="acquire") < k:
        pass
    tl.debug_barrier()


@triton.jit
def _publish(counter):
    # Every thread's partial stores, then one release increment: the barrier plus the
    # release's cumulativity make the stores visible before the count (CUTLASS's semaphore
    # pattern). Returns the count before this increment.
    tl.debug_barrier()
    return tl.atomic_add(counter, 1, sem="acq_rel")


@triton.jit
def _local(v, start, chunk):
    # A row-grid index as a chunk-local 32-bit one, clamped to [0, chunk] (the row kernels
    # keep a 64-bit chunk origin and 32-bit element indices, so a row may pass 2^31).
    return tl.minimum(tl.maximum(v - start, 0), chunk).to(tl.int32)


@triton.jit
def _lse_of(m, s):
    # log(sum exp) from a merged pair: +inf where the max is +inf (s is NaN there);
    # an all -inf row has m = -FLT_MAX or -inf and s = 0 or NaN: give -inf.
    lse = m + tl.log(s)
    lse = tl.where(m == float("inf"), float("inf"), lse)
    lse = tl.where((m == float("-inf")) | ((m == _NEG_BIG) & (s == 0.0)), float("-inf"), lse)
    return lse
