"""`python -m twopass bench`: twopass against its own algorithms, its peers and the
memory-bandwidth bound, on this machine, in one run.

    python -m twopass bench --quick          # about a minute
    python -m twopass bench                  # the full sweep (at most ~10 minutes)
    python -m twopass bench --tune           # does algorithm="auto" lose anywhere, hot or cold?
    python -m twopass bench --plot-only bench_results/bench-....json

Modules: _plan (shapes, the traffic table, cache regimes, the case list), _measure
(timer, buffers, bandwidth probes, twopass calls), _peers (NumPy, SciPy, PyTorch, ONNX
Runtime, JAX), _run (cases to records), _analysis (GB/s, bound, ratios), _report (tables,
JSON), _plots (PNGs), _tune (--tune), _cli (the command line).
"""

from __future__ import annotations

from ._cli import main

__all__ = ["main"]
