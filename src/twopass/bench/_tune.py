"""--tune: does algorithm="auto" ever lose to the faster of two_pass and three_pass_reload?

For each dtype (float32, float64; bfloat16 and float16 on request), op (softmax, log_softmax), thread count and shape
(single rows 2^10 .. 2^26 and the batch shapes of `_plan.FULL_BATCHES`; --quick: fewer),
three variants are timed through the public path with out=: two_pass, three_pass_reload
and auto (whatever rule `algorithm="auto"` follows today), on the same buffers, in
rounds that alternate them (the order rotating from round to round), so a slow spell of
the shared machine hits all three: `TUNE_ROUNDS` with --quick, `FULL_ROUNDS` otherwise,
and more, up to `MAX_ROUNDS`, while a variant's median round is over `SPREAD` x its
fastest (a spell then holds the median). A variant's time is the median over the rounds
of each round's median (the timer of `_measure`).

Each cell is measured in two regimes:
  hot:  the same buffer set on every call (what stays in cache, stays);
  cold: `cold_nsets` sets cycled through, so that at least 2 x L3 is touched between two
        uses of a set and every call starts out of cache. A working set (x + y) of 2 x L3
        or more needs one set: hot and cold are then the same procedure, measured once and
        reported under both (`same_as_hot`).

auto/best = time(auto) / min(time(two_pass), time(three_pass_reload)); the issue's bar is
<= `LIMIT` in every cell. Which algorithm auto ran is found from its output, compared bit
for bit with the two algorithms' outputs on the same input ("either" when both match,
"neither" when none does), not from the library's rule, whose signature may change. A cell over
the limit is a wrong pick when auto ran the algorithm that measured slower; else auto's
own time is off (noise, or at the shortest rows the cost of the rule itself, a fraction
of a microsecond per call). A cell over the limit is measured once more, all three
variants, `MAX_ROUNDS` rounds: a slow spell of the shared machine that hit one variant's
rounds more than the others' does not repeat there, a real loss does. The table shows
the second measurement; the JSON keeps the first too (`first_auto_over_best`), and the
summary counts the cells rechecked.

Then the software-prefetch distance (TWOPASS_PREFETCH_BYTES): the passes that prefetch
(two_pass softmax, log_softmax and logsumexp), cold, on `PREFETCH_SHAPES`, at each of
`PREFETCH_DISTANCES` in alternating rounds; per distance the geometric mean of its time
over the fastest distance's, cell by cell. The best distance and what it would gain over
the one in use are printed: the library's default is a constant (twopass._dispatch), this
says whether this machine wants another.

The results go to a JSON file beside the other benchmark results (nothing is written into
the package).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _measure, _plan, _report, _run

TUNE_DTYPES = ("float32", "float64")  # the default; the halves on request (--dtypes)
TUNE_DTYPES_ALLOWED = (*TUNE_DTYPES, "bfloat16", "float16")
TUNE_OPS = ("softmax", "log_softmax")
ALGOS = ("two_pass", "three_pass_reload")  # the two auto picks between
VARIANTS = (*ALGOS, "auto")
REGIMES = ("hot", "cold")
TUNE_ROUNDS = 3  # alternating rounds of the three variants per cell (--quick)...
FULL_ROUNDS = 5  # (the full run)
MAX_ROUNDS = 9  # ...and up to this many while a variant's median round is > SPREAD x its fastest round
SPREAD = 1.15
LIMIT = 1.10  # auto within 10% of the faster algorithm

FULL_SHAPES: tuple[tuple[int, ...], ...] = tuple((n,) for n in _plan.FULL_ROWS) + tuple(_plan.FULL_BATCHES)
QUICK_SHAPES: tuple[tuple[int, ...], ...] = tuple((1 << k,) for k in (10, 14, 18, 20, 22, 24)) + (
    (4096, 4096),
    (32, 128256),
)
# The full run: 2 dtypes x 2 ops x 2 thread counts x 2 regimes x 21 shapes x 3 variants x
# 5..9 rounds of measurements (--quick: 8 shapes, 3..9 rounds); with the sweep's budgets,
# --quick took ~50 s on the development machine (2 cores, AVX-512, shared), and the full
# run ~5 minutes with 3 rounds.
FULL_BUDGET = _measure.FULL
QUICK_BUDGET = _measure.QUICK

PREFETCH_DISTANCES = (2048, 4096, 8192, 16384, 32768)
PREFETCH_SHAPES: tuple[tuple[int, ...], ...] = ((4096, 4096), (1 << 24,))
PREFETCH_OPS = ("softmax", "log_softmax", "logsumexp")

SHORT = {"two_pass": "2p", "three_pass_reload": "3r", "either": "=", "neither": "?"}


# ----------------------------------------------------------------------------------
# Pure parts.
# ----------------------------------------------------------------------------------
def cold_nsets(ws: int, l3: int) -> int:
    """Buffer sets cycled through in the cold regime: enough that >= 2 x L3 is touched
    between two uses of one set (one set when the working set alone is that large)."""
    return max(1, math.ceil(2 * l3 / ws))


def nsets(regime: str, ws: int, l3: int) -> int:
    if regime == "hot":
        return 1
    if regime == "cold":
        return cold_nsets(ws, l3)
    raise ValueError(f"regime {regime!r}: not among {', '.join(REGIMES)}")


def auto_over_best(median_s: dict[str, float]) -> float:
    """time(auto) / time(the faster of two_pass and three_pass_reload)."""
    return median_s["auto"] / min(median_s[a] for a in ALGOS)


def spread(per_round: dict[str, list[float]]) -> float:
    """The largest (median round / fastest round) of the variants: near 1 when most
    rounds agree; large when a slow spell covered half the rounds or more, so that the
    median is one of its rounds (timing noise only ever slows a call down)."""
    return max((float(np.median(v)) / min(v) for v in per_round.values() if v), default=1.0)


def auto_choice(auto_out: np.ndarray, outs: dict[str, np.ndarray]) -> str:
    """Which algorithm produced `auto_out`, by bitwise comparison with each algorithm's output."""
    same = [a for a in ALGOS if np.array_equal(auto_out, outs[a], equal_nan=True)]
    return same[0] if len(same) == 1 else "either" if same else "neither"


def cell_name(c: dict[str, Any]) -> str:
    return (
        f"{c['dtype']} {c['op']} {_plan.format_shape(tuple(c['shape']))} "
        f"{c['threads']} thread{'s' if c['threads'] > 1 else ''} {c['regime']}"
    )


def wrong_pick(c: dict[str, Any]) -> bool:
    """auto ran the algorithm that measured slower in this cell."""
    return c["auto_choice"] in ALGOS and c["auto_choice"] != c["faster"]


def over_text(c: dict[str, Any]) -> str:
    """One cell over the limit, and why."""
    med = c["median_s"]
    slow, fast = sorted(ALGOS, key=lambda a: med[a], reverse=True)
    if wrong_pick(c):
        why = f"wrong pick: auto ran {slow}, {fast} {med[slow] / med[fast]:.3f}x faster"
    else:
        why = f"auto ran {c['auto_choice']} ({fast} measured faster, by {med[slow] / med[fast]:.3f}x): auto's own time"
    return f"{cell_name(c)}: {c['auto_over_best']:.2f}, {why}"


def summary(cells: Sequence[dict[str, Any]], limit: float = LIMIT) -> dict[str, Any]:
    """Cells measured, the worst auto/best (and its cell), the cells over `limit` (and
    which of them are wrong picks), and the noisy cells."""
    over = [c for c in cells if c["auto_over_best"] > limit]
    worst = max(cells, key=lambda c: c["auto_over_best"]) if cells else None
    return {
        "cells": len(cells),
        "worst": None if worst is None else worst["auto_over_best"],
        "worst_cell": None if worst is None else cell_name(worst),
        "over": len(over),
        "over_cells": [cell_name(c) for c in over],
        "over_text": [over_text(c) for c in over],
        "wrong_picks": sum(map(wrong_pick, over)),
        "noisy": sum(c.get("spread", 1.0) > SPREAD for c in cells),
        "rechecked": sum(c.get("first_auto_over_best", 0.0) > limit and not c.get("same_as_hot") for c in cells),
        "limit": limit,
    }


# ----------------------------------------------------------------------------------
# Measuring.
# ----------------------------------------------------------------------------------
def _choice(op: str, s: _measure.BufferSet, isa: str, threads: int) -> str:
    """Run each variant once on set `s`'s input (the timed call, into a fresh output)
    and name the algorithm auto's output matches."""
    outs: dict[str, np.ndarray] = {}
    for a in VARIANTS:
        y = np.empty_like(s.y)
        _measure.twopass_calls(op, a, isa, threads, [_measure.BufferSet(s.x, y, np.empty_like(s.lse))])[0]()
        outs[a] = y
    return auto_choice(outs.pop("auto"), outs)


def time_variants(
    op: str,
    isa: str,
    threads: int,
    sets: list[_measure.BufferSet],
    budget: _measure.Budget,
    rounds: int = TUNE_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
) -> dict[str, list[float]]:
    """Per variant, the median time of each round; the variants alternate within a
    round, their order rotated by one from round to round. After `rounds` rounds, more
    (up to `max_rounds`) while a median is off its fastest round (`spread` > SPREAD): on
    the shared machine a slow spell (another process on the second core, which stalls a
    2-thread call at its barriers) can last several measurements, and the median needs a
    majority of rounds outside it."""
    calls = {a: _measure.twopass_calls(op, a, isa, threads, sets) for a in VARIANTS}
    per_round: dict[str, list[float]] = {a: [] for a in VARIANTS}
    r = 0
    while r < rounds or (r < max_rounds and spread(per_round) > SPREAD):
        k = r % len(VARIANTS)
        for a in VARIANTS[k:] + VARIANTS[:k]:
            per_round[a].append(_measure.measure(calls[a], budget).median_s)
        r += 1
    return per_round


def run(
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[str],
    ops: Sequence[str],
    threads: Sequence[int],
    isa: str,
    budget: _measure.Budget,
    caches: dict[str, int],
    advance: Callable[[str], None],
    rounds: int = TUNE_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
) -> list[dict[str, Any]]:
    """Every (dtype, shape, threads, op, regime) cell, in that loop order (buffers are
    made once per dtype and shape, and freed before the next)."""
    l3 = caches["L3"]
    cells: list[dict[str, Any]] = []
    for dtype in dtypes:
        np_dtype = _run._dtype(dtype)
        itemsize = np_dtype.itemsize
        for shape in shapes:
            bufs = _measure.Buffers(tuple(shape), np_dtype)
            for t in threads:
                for op in ops:
                    ws = _plan.working_set(tuple(shape), itemsize, op)
                    choice = _choice(op, bufs.get(1)[0], isa, t)
                    hot: dict[str, list[float]] | None = None
                    for regime in REGIMES:
                        k = nsets(regime, ws, l3)
                        advance(f"tune {dtype} {op} {_plan.format_shape(tuple(shape))} {t}t {regime} ({k} sets)")
                        if regime == "cold" and k == 1 and hot is not None:
                            per_round, same = hot, True  # one set either way: the same procedure as hot
                        else:
                            per_round, same = time_variants(op, isa, t, bufs.get(k), budget, rounds, max_rounds), False
                        first = auto_over_best({a: float(np.median(v)) for a, v in per_round.items()})
                        if first > LIMIT and not same:  # measured again, all three, max_rounds rounds
                            per_round = time_variants(op, isa, t, bufs.get(k), budget, max_rounds, max_rounds)
                        if regime == "hot":
                            hot = per_round
                        med = {a: float(np.median(v)) for a, v in per_round.items()}
                        cells.append(
                            {
                                "dtype": dtype,
                                "op": op,
                                "shape": list(shape),
                                "threads": t,
                                "regime": regime,
                                "nsets": k,
                                "working_set_bytes": ws,
                                "level": _plan.cache_level(ws, caches),
                                "median_s": med,
                                "rounds_s": per_round,
                                "spread": spread(per_round),
                                "auto_choice": choice,
                                "auto_over_best": auto_over_best(med),
                                "faster": min(ALGOS, key=lambda a: med[a]),
                                "reload_over_two_pass": med["three_pass_reload"] / med["two_pass"],
                                "same_as_hot": same,
                                "first_auto_over_best": first,  # before a recheck (equal when none)
                            }
                        )
            del bufs
            gc.collect()
    return cells


def prefetch_cells(
    isa: str,
    threads: Sequence[int],
    budget: _measure.Budget,
    caches: dict[str, int],
    advance: Callable[[str], None],
    rounds: int = TUNE_ROUNDS,
    shapes: Sequence[tuple[int, ...]] = PREFETCH_SHAPES,
    distances: Sequence[int] = PREFETCH_DISTANCES,
) -> list[dict[str, Any]]:
    """Per (shape, threads, op): the median over `rounds` alternating rounds of each
    distance's time, two_pass, float32, cold. The distance in use is restored after."""
    from twopass import _core

    saved = _core.prefetch_bytes()
    cells: list[dict[str, Any]] = []
    try:
        for shape in shapes:
            bufs = _measure.Buffers(tuple(shape), np.dtype(np.float32))
            for t in threads:
                for op in PREFETCH_OPS:
                    advance(f"prefetch {op} {_plan.format_shape(tuple(shape))} {t}t")
                    ws = _plan.working_set(tuple(shape), 4, op)
                    calls = _measure.twopass_calls(op, "two_pass", isa, t, bufs.get(cold_nsets(ws, caches["L3"])))
                    per: dict[int, list[float]] = {d: [] for d in distances}
                    for r in range(rounds):
                        k = r % len(distances)
                        for d in list(distances[k:]) + list(distances[:k]):
                            _core.set_prefetch_bytes(d)
                            per[d].append(_measure.measure(calls, budget).median_s)
                    med = {d: float(np.median(v)) for d, v in per.items()}
                    cells.append({"shape": list(shape), "threads": t, "op": op, "median_s": med})
            del bufs
            gc.collect()
    finally:
        _core.set_prefetch_bytes(saved)
    return cells


def prefetch_summary(cells: Sequence[dict[str, Any]], current: int) -> dict[str, Any]:
    """Per distance, the geometric mean over cells of time / the cell's fastest time;
    the best distance, and the current one's mean over the best's."""
    if not cells:
        return {}
    distances = [int(d) for d in cells[0]["median_s"]]
    rel = {
        d: float(np.exp(np.mean([np.log(c["median_s"][d] / min(c["median_s"].values())) for c in cells])))
        for d in distances
    }
    best = min(rel, key=rel.get)
    return {
        "over_fastest": rel,
        "best": best,
        "current": current,
        "current_over_best": rel[current] / rel[best] if current in rel else None,
    }


def document(
    cells: list[dict[str, Any]],
    *,
    isa: str,
    argv: list[str],
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[str],
    ops: Sequence[str],
    threads: Sequence[int],
    budget: _measure.Budget,
    rounds: int = TUNE_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    elapsed_s: float | None = None,
    load_average: dict[str, float | None] | None = None,
    prefetch: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    import twopass
    from twopass import _core

    return {
        **_report.header("twopass-tune/2", argv, twopass.info()),
        "isa": isa,
        "config": {
            "shapes": [list(s) for s in shapes],
            "dtypes": list(dtypes),
            "ops": list(ops),
            "threads": list(threads),
            "rounds": rounds,
            "max_rounds": max_rounds,
            "spread": SPREAD,
            "budget": budget.__dict__,
        },
        "definitions": {
            "hot": "the same buffer set (x, y) on every call",
            "cold": "cycling through nsets = max(1, ceil(2 x L3 / working set)) sets: >= 2 x L3 touched between "
            "two uses of a set; one set (then the same measurement as hot: same_as_hot) once the working set "
            "is 2 x L3 or more",
            "working_set_bytes": "x + y of one call",
            "median_s": "per variant, the median over rounds of each round's median seconds per call; the "
            f"variants alternate within a round (public path, out=); {rounds} rounds, up to {max_rounds} while "
            f"spread > {SPREAD}",
            "spread": "max over the variants of (median round / fastest round); noisy (~ in the table) above "
            f"{SPREAD} after the last round",
            "auto_choice": "the algorithm whose output auto's matches bit for bit ('either': both; 'neither': none)",
            "auto_over_best": "median_s.auto / min(median_s.two_pass, median_s.three_pass_reload)",
            "wrong pick": "a cell over the limit where auto ran the algorithm that measured slower (else auto's "
            "own time is off: noise, or the rule's per-call cost at the shortest rows)",
            "limit": f"auto_over_best <= {LIMIT} in every cell",
        },
        "summary": summary(cells),
        "results": cells,
        "prefetch": {"cells": prefetch or [], "summary": prefetch_summary(prefetch or [], _core.prefetch_bytes())},
        "elapsed_s": elapsed_s,
        "load_average": load_average,
    }


# ----------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.3g}"


def tables(doc: dict[str, Any]) -> list[Any]:
    """One rich table per (dtype, op): rows = shapes, columns = per (threads, regime)
    two_pass ms, reload ms, auto/best (red above LIMIT; the letter: auto's choice)."""
    from rich import box
    from rich.table import Table

    cfg = doc["config"]
    by = {(c["dtype"], c["op"], tuple(c["shape"]), c["threads"], c["regime"]): c for c in doc["results"]}
    out = []
    for dtype in cfg["dtypes"]:
        for op in cfg["ops"]:
            table = Table(
                title=f"{dtype} {op}: ms per call (bold: the faster algorithm), auto/best (red: > {LIMIT:.2f})",
                title_justify="left",
                box=box.SIMPLE_HEAD,  # no vertical rules, no outer padding: 13 columns within 140 characters
                pad_edge=False,
                caption="auto's choice: 2p two_pass, 3r three_pass_reload, = either (same output), ? neither; "
                f"~ noisy: a median round still > {SPREAD}x the fastest after {cfg['max_rounds']}; "
                "dim cold: working set >= 2 x L3, one set, the hot measurement",
                caption_justify="left",
            )
            table.add_column("shape", justify="right")
            cols = [(t, r) for t in cfg["threads"] for r in REGIMES]
            for t, r in cols:
                table.add_column(f"{t}t {r}\n2p ms", justify="right")
                table.add_column(f"{t}t {r}\n3r ms", justify="right")
                table.add_column(f"{t}t {r}\nauto/best", justify="right")
            for shape in cfg["shapes"]:
                row = [_plan.format_shape(tuple(shape))]
                for t, r in cols:
                    c = by.get((dtype, op, tuple(shape), t, r))
                    if c is None:
                        row += ["", "", ""]
                        continue
                    med = c["median_s"]
                    dim = "dim " if c["same_as_hot"] else ""
                    for a in ALGOS:
                        style = dim + ("bold" if c["faster"] == a else "")
                        row.append(f"[{style}]{_ms(med[a])}[/]" if style.strip() else _ms(med[a]))
                    ratio = c["auto_over_best"]
                    style = dim + ("red" if ratio > LIMIT else "")
                    noisy = "~" if c.get("spread", 1.0) > SPREAD else ""
                    text = f"{ratio:.2f}{noisy} {SHORT.get(c['auto_choice'], c['auto_choice'])}"
                    row.append(f"[{style}]{text}[/]" if style.strip() else text)
                table.add_row(*row)
            out.append(table)
    return out


def summary_line(s: dict[str, Any]) -> str:
    if not s["cells"]:
        return "no cells measured"
    colour = "green" if s["over"] == 0 else "red"
    picks = f"{s['wrong_picks']} wrong pick{'' if s['wrong_picks'] == 1 else 's'}"
    return (
        f"{s['cells']} cells: worst auto/best {s['worst']:.3f} ({s['worst_cell']}); "
        f"[{colour}]{s['over']} cells over {s['limit']:.2f}[/{colour}] ({picks}); "
        f"{s['noisy']} noisy (~); {s.get('rechecked', 0)} measured twice (over {s['limit']:.2f} the first time)"
    )


def print_report(console: Any, doc: dict[str, Any]) -> None:
    m = doc["machine"]
    caches = m["caches"]
    console.rule(f"twopass bench --tune: {m['cpu']}, {doc['isa']}, {doc['date']}")
    console.print(
        f"L3 {_plan.format_bytes(caches['L3'])}: cold cycles buffer sets until >= "
        f"{_plan.format_bytes(2 * caches['L3'])} is touched between two uses of a set; "
        f"{doc['config']['rounds']} alternating rounds per cell (up to {doc['config']['max_rounds']} while a median "
        f"round is > {doc['config']['spread']}x the fastest), median of the rounds' medians."
    )
    for table in tables(doc):
        console.print(table)
    s = doc["summary"]
    console.print(summary_line(s))
    for text in s["over_text"]:
        console.print(f"  {text}", highlight=False)
    pf = doc.get("prefetch", {})
    if pf.get("cells"):
        console.print(_prefetch_table(pf["cells"]))
        ps = pf["summary"]
        gain = ps["current_over_best"]
        advice = ""
        if gain and gain > 1.02:
            advice = f", {gain:.3f} x the best's time: set TWOPASS_PREFETCH_BYTES={ps['best']}"
        console.print(
            f"prefetch distance: best {ps['best']} bytes (geometric mean over the cells: "
            + ", ".join(f"{d}: {v:.3f}" for d, v in ps["over_fastest"].items())
            + f" x the fastest); in use {ps['current']}"
            + advice
        )


def _prefetch_table(cells: Sequence[dict[str, Any]]) -> Any:
    from rich import box
    from rich.table import Table

    distances = list(cells[0]["median_s"])
    table = Table(
        title="software-prefetch distance: two_pass float32, cold, ms per call (bold: the fastest)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for col in ("shape", "threads", "op", *(f"{int(d) // 1024} KiB" for d in distances)):
        table.add_column(col, justify="right")
    for c in cells:
        best = min(c["median_s"], key=c["median_s"].get)
        row = [_plan.format_shape(tuple(c["shape"])), str(c["threads"]), c["op"]]
        row += [f"[bold]{_ms(v)}[/]" if d == best else _ms(v) for d, v in c["median_s"].items()]
        table.add_row(*row)
    return table
