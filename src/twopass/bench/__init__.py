"""`python -m twopass bench`: every benchmark of twopass, one command, one mode at a time.

    python -m twopass bench --quick          # the CPU sweep, about a minute
    python -m twopass bench                  # the full CPU sweep (at most ~10 minutes)
    python -m twopass bench --sizes 16M --threads 1 --no-peers   # one 2^24 row: every algorithm
                                             # against the read and copy passes (the bound)
    python -m twopass bench --tune           # does algorithm="auto" lose anywhere, hot or cold?
    python -m twopass bench --cross-entropy  # the fused loss, forward + backward, on the CPU
    python -m twopass bench --device cuda    # the Triton kernels against torch, % of the HBM floor
    python -m twopass bench --device cuda --cross-entropy [--variants] [--sweep]
    python -m twopass bench --device cuda --compile   # no GPU: every kernel built for sm_90, resources
    python -m twopass bench --distributed    # vocabulary-parallel ops, gloo processes (nccl: --device cuda)
    python -m twopass bench --plot-only bench_results/bench-....json   # any run's tables again

Without a CUDA device, --device cuda stops with a message (exit status 2); under
TRITON_INTERPRET=1 it runs its whole path on tiny CPU tensors (timings meaningless). Every
mode writes OUT/<kind>-DATE.json (--out, default bench_results). Wrong results are never
timed silently: --device cuda exits 1 when a result disagrees with torch's, the sweep stops
when the bare kernel call disagrees with the public path, --distributed when twopass and
the baseline disagree; a peer off from twopass is reported in the sweep's notes.

Where each op's cases are:
    softmax, log_softmax, logsumexp   CPU: _plan (OPS, FULL_ROWS, FULL_BATCHES, QUICK_*; the
                                      traffic table TRAFFIC), --tune: _tune (FULL_SHAPES, ...);
                                      CUDA: _softmax_cuda (SHAPES, OPS with the backward ops)
    cross_entropy                     CPU: _cross_entropy (SHAPES, DTYPES, VARIANTS);
                                      CUDA: _cross_entropy_cuda (SHAPES, VARIANTS, METHODS)
    distributed cross_entropy, logsumexp   _distributed (OPS, WORLDS, SHAPES)

Modules: _cli (the one argument parser; which options each mode takes: MODE_OPTIONS),
_report (the results' header, saving and loading, the progress bar, the sweep's tables),
_plan (shapes, traffic, cache regimes, the case list), _measure (timer, buffers, bandwidth
probes, twopass calls), _peers (NumPy, SciPy, PyTorch, ONNX Runtime, JAX), _run (cases to
records), _analysis (GB/s, bound, ratios), _plots (PNGs), _tune (--tune), _cuda (what the
CUDA modes share: device check, timer, copy bandwidth, --compile's sm_90 build).
"""

from __future__ import annotations

from ._cli import main

__all__ = ["main"]
