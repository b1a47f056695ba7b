"""--tune: the row length from which two_pass beats three_pass_reload, for algorithm="auto".

For each dtype and op (softmax, log_softmax), 1 thread, the best ISA, and row lengths
256 .. 16M (powers of 2), time both algorithms over a batch of rows of that length whose
input fills the last-level cache (so x + y, 2x L3, streams from memory as a real batch
would; a row longer than that is a batch of one). The crossover is the shortest measured
length from which two_pass is faster at every longer length, after each ratio is smoothed
with its neighbours' (a median of three); 0 when it is faster
everywhere, `NEVER` when it is never faster at the longest. `_api._auto_algorithm` reads
the result: two_pass for rows at least that long, else three_pass_reload.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import _measure, _plan

TUNE_SIZES = tuple(1 << k for k in range(8, 25))  # 256 .. 16M
TUNE_DTYPES = ("float32", "float64")
TUNE_OPS = ("softmax", "log_softmax")
NEVER = 1 << 62  # "two_pass is never faster": a row length no array reaches
TUNE_ROUNDS = 3  # rounds of (two_pass, three_pass_reload) per length; the ratio is their median
TUNE_BUDGET = _measure.Budget(min_repeat_s=5e-3, per_case_s=0.1, min_repeats=7, max_repeats=11)


def default_path() -> Path:
    """Where `algorithm="auto"` reads it: beside twopass/_api.py."""
    from twopass import _api

    return Path(_api.__file__).with_name("_tuning.json")


def tune_shape(n: int, itemsize: int, caches: dict[str, int]) -> tuple[int, ...]:
    rows = max(1, caches["L3"] // (n * itemsize))
    return (rows, n) if rows > 1 else (n,)


def smoothed(ratios: dict[int, float]) -> dict[int, float]:
    """Each ratio replaced by the median of itself and its two neighbouring lengths (the
    shortest and longest kept): on a shared machine one length's timing can be off by
    20%, and a lone outlier must not move the crossover by decades (two runs of the
    unsmoothed rule gave 2^11 and 2^18)."""
    ns = sorted(ratios)
    return {
        n: ratios[n] if i in (0, len(ns) - 1) else float(np.median([ratios[m] for m in ns[i - 1 : i + 2]]))
        for i, n in enumerate(ns)
    }


def crossover(ratios: dict[int, float]) -> int:
    """ratios[n] = time(two_pass) / time(three_pass_reload); the rule runs on smoothed()."""
    r = smoothed(ratios)
    ns = sorted(r)
    if not ns or r[ns[-1]] >= 1:
        return NEVER
    k = len(ns) - 1
    while k > 0 and r[ns[k - 1]] < 1:
        k -= 1
    return 0 if k == 0 else ns[k]


Ratios = dict[str, dict[str, dict[int, float]]]  # [dtype][op][row length]


def run(
    isa: str,
    sizes: tuple[int, ...],
    advance: Callable[[str], None],
    budget: _measure.Budget = TUNE_BUDGET,
    dtypes: tuple[str, ...] = TUNE_DTYPES,
    ops: tuple[str, ...] = TUNE_OPS,
) -> Ratios:
    """ratios[dtype][op][n], timing both algorithms on the same buffers, one after the other."""
    from twopass import _dispatch

    caches = _dispatch.cache_sizes()
    out: Ratios = {d: {op: {} for op in ops} for d in dtypes}
    for dtype in dtypes:
        for n in sizes:
            shape = tune_shape(n, np.dtype(dtype).itemsize, caches)
            bufs = _measure.Buffers(shape, np.dtype(dtype))
            reg = _plan.regime(_plan.working_set(shape, np.dtype(dtype).itemsize, "softmax"), caches)
            sets = bufs.get(reg.nsets)
            for op in ops:
                advance(f"tune {dtype} {op} n={_plan.format_count(n)}")
                rounds = []
                for _ in range(TUNE_ROUNDS):  # alternating, so a slow spell hits both
                    t = {
                        a: _measure.measure(_measure.twopass_calls(op, a, isa, 1, sets), budget).median_s
                        for a in ("two_pass", "three_pass_reload")
                    }
                    rounds.append(t["two_pass"] / t["three_pass_reload"])
                out[dtype][op][n] = float(np.median(rounds))
            del bufs, sets
    return out


def document(ratios: Ratios, isa: str, command: str) -> dict[str, Any]:
    import twopass

    info = twopass.info()
    l3 = _plan.format_bytes(info["caches"]["L3"])
    doc: dict[str, Any] = {d: {op: crossover(r) for op, r in per.items()} for d, per in ratios.items()}
    doc.update(
        machine=f"{info['cpu']}, {info['threads']} threads, {isa}, L3 {l3}",
        date=dt.date.today().isoformat(),
        command=command,
        note=(
            f"row length (elements) from which algorithm='auto' takes two_pass; below it, three_pass_reload. "
            f"0: two_pass at every length measured; {NEVER}: never. Measured with 1 thread on {isa}, batches "
            f"whose input fills L3 ({l3}), rows {_plan.format_count(min(TUNE_SIZES))}.."
            f"{_plan.format_count(max(TUNE_SIZES))}; ratios = time(two_pass) / time(three_pass_reload)."
        ),
        ratios={
            d: {op: {str(n): round(v, 4) for n, v in r.items()} for op, r in per.items()} for d, per in ratios.items()
        },
    )
    return doc


def write(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def print_table(console: Any, ratios: Ratios, doc: dict[str, Any]) -> None:
    from rich.table import Table

    cols = [(d, op) for d, per in ratios.items() for op in per]
    table = Table(
        title="time(two_pass) / time(three_pass_reload), 1 thread (< 1: two_pass faster)", title_justify="left"
    )
    table.add_column("row length", justify="right")
    for d, op in cols:
        table.add_column(f"{d} {op}", justify="right")
    sizes = sorted({n for per in ratios.values() for r in per.values() for n in r})
    for n in sizes:
        cells = []
        for d, op in cols:
            v = ratios[d][op].get(n, math.nan)
            cells.append(f"[{'green' if v < 1 else 'red'}]{v:.3f}[/]")
        table.add_row(_plan.format_count(n), *cells)
    console.print(table)
    for d, op in cols:
        c = doc[d][op]
        console.print(f"{d} {op}: two_pass from n = {'always' if c == 0 else 'never' if c == NEVER else c}")
