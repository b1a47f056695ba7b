"""The command line: parse, resolve defaults, run, report, save, plot."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import _analysis, _measure, _peers, _plan, _report

USAGE = """python -m twopass bench [options]

Sweeps one-row lengths 1K..64M and batch shapes for softmax, log_softmax and logsumexp,
every algorithm, ISA and thread count, against the installed peers, with the memory
bandwidth bound measured on the same buffers. --quick: about a minute."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twopass bench", usage=USAGE)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a 2^12, 2^18 and 2^24 row and the 4096x4096 and 32x128256 batches; two_pass vs "
        "three_pass_reload, best ISA, fewer repeats",
    )
    p.add_argument("--threads", help="thread counts, e.g. 1,2 (default: 1 and all cores)")
    p.add_argument(
        "--isa", help="ISAs, e.g. scalar,avx2 (default: all this CPU runs; --quick: the best; --tune: one, the best)"
    )
    p.add_argument("--ops", help=f"ops (default: {','.join(_plan.OPS)}; --tune: softmax,log_softmax)")
    p.add_argument("--dtypes", help="--tune only: dtypes (default: float32,float64)")
    p.add_argument("--algorithms", help=f"twopass algorithms (default: {','.join(_plan.ALGORITHMS)})")
    p.add_argument("--sizes", help="rows N (e.g. 4K,16M) and batches RxN (e.g. 4096x4096); default: the sweep")
    p.add_argument(
        "--peers", help=f"peers to run (default: every installed one of {','.join(p.name for p in _peers.PEERS)})"
    )
    p.add_argument("--repeats", type=int, help="exactly this many timed repeats (default: by size, at least 5)")
    p.add_argument("--out", default="bench_results", help="directory for the JSON and PNGs (default: bench_results)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG")
    p.add_argument("--no-peers", action="store_true", help="twopass only")
    p.add_argument(
        "--tune",
        action="store_true",
        help="only that: does algorithm='auto' lose? softmax and log_softmax, float32 and float64, rows 1K..64M "
        "and the batches, hot (same buffers) and cold (buffers cycled over > 2x L3): two_pass, three_pass_reload "
        "and auto, alternating, and auto / the faster of the two per cell (--quick: 8 shapes, ~3 minutes; "
        "full: ~15-20 minutes); JSON to --out",
    )
    p.add_argument("--tune-out", help="the JSON file --tune writes (default: OUT/tune-DATE.json)")
    p.add_argument(
        "--cross-entropy",
        action="store_true",
        help="the fused cross-entropy (forward + backward) against torch eager and compiled, with memory (only that)",
    )
    p.add_argument("--plot-only", metavar="JSON", help="redraw the plots of a saved run, and print its tables")
    return p


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _choose(
    given: list[str] | None, default: tuple[str, ...] | list[str], allowed: tuple[str, ...] | list[str], what: str
) -> list[str]:
    chosen = list(default) if given is None else given
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise ValueError(f"{what}: {', '.join(bad) or 'none given'} not among {', '.join(allowed)}")
    return chosen


def resolve(args: argparse.Namespace) -> tuple[_plan.Config, _measure.Budget]:
    """The defaults of the full and --quick runs, overridden by the options given."""
    from twopass import _dispatch

    supported = _dispatch.isa_supported()
    isas = _choose(_split(args.isa), supported[-1:] if args.quick else supported, supported, "--isa")
    ops = _choose(_split(args.ops), _plan.OPS, _plan.OPS, "--ops")
    algos = _choose(
        _split(args.algorithms),
        _plan.QUICK_ALGORITHMS if args.quick else _plan.ALGORITHMS,
        _plan.ALGORITHMS,
        "--algorithms",
    )
    threads = _threads(args)
    if args.sizes:
        shapes = [_plan.parse_size(s) for s in _split(args.sizes) or []]
    else:
        rows, batches = (_plan.QUICK_ROWS, _plan.QUICK_BATCHES) if args.quick else (_plan.FULL_ROWS, _plan.FULL_BATCHES)
        shapes = [(n,) for n in rows] + [tuple(b) for b in batches]
    budget = _fixed_repeats(_measure.QUICK if args.quick else _measure.FULL, args.repeats)
    isas.sort(key=supported.index)
    cfg = _plan.Config(
        shapes=shapes,
        ops=ops,
        algorithms=algos,
        isas=isas,
        threads=threads,
        peers=not args.no_peers,
        repeats=args.repeats,
        quick=args.quick,
    )
    return cfg, budget


def _threads(args: argparse.Namespace) -> list[int]:
    from twopass import _dispatch

    if not args.threads:
        return sorted({1, _dispatch.default_threads()})
    try:
        threads = sorted({int(t) for t in _split(args.threads) or []})
    except ValueError:
        threads = []
    if not threads or threads[0] < 1:
        raise ValueError("--threads: positive integers, e.g. 1,2")
    return threads


def _fixed_repeats(budget: _measure.Budget, repeats: int | None) -> _measure.Budget:
    """--repeats: exactly that many timed repeats per measurement."""
    if repeats is None:
        return budget
    if repeats < 1:
        raise ValueError("--repeats must be >= 1")
    return _measure.Budget(budget.min_repeat_s, budget.per_case_s, repeats, repeats, repeats)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a file or a pipe: wide enough for the tables, unwrapped
        console = Console(width=max(console.width, 140))
    try:
        if args.plot_only:
            return _plot_only(console, Path(args.plot_only), args)
        if args.tune:
            return _tune(console, args, argv)
        if args.dtypes:
            raise ValueError("--dtypes is a --tune option (the sweep runs float32)")
        if args.cross_entropy:
            from . import _cross_entropy

            threads = [int(v) for v in _split(args.threads)] if args.threads else sorted({1, os.cpu_count() or 1})
            _cross_entropy.run(args.quick, threads, Path(args.out), console, argv)
            return 0
        cfg, budget = resolve(args)
    except (ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    doc = run(cfg, budget, console, argv, peer_names=_split(args.peers))
    stem = f"bench-{doc['date'].replace(':', '').replace('T', '-')}"
    out = Path(args.out)
    path = out / f"{stem}.json"
    _report.write_json(doc, path)
    _report.print_report(console, doc)
    console.print(f"JSON: {path}")
    if not args.no_plots:
        from . import _plots

        for p in _plots.draw_all(doc, out, stem):
            console.print(f"plot: {p}")
    console.print(f"total time: {doc['elapsed_s']:.0f} s")
    return 0


def run(
    cfg: _plan.Config, budget: _measure.Budget, console: Any, argv: list[str], peer_names: list[str] | None = None
) -> dict[str, Any]:
    """Measure everything in `cfg`; return the JSON document (results annotated)."""

    import twopass

    from ._run import Runner

    t_start = time.perf_counter()
    load_before = _load_warning(console)
    info = twopass.info()
    caches = info["caches"]
    peers, notes = _peers.available(peer_names) if cfg.peers else ([], [])
    peer_modes = {p.name: p.threading for p in peers}
    itemsize = 8 if cfg.dtype == "float64" else 4
    cases = {s: _plan.plan_shape(cfg, s, caches, itemsize, _measure.PROBES, peer_modes) for s in cfg.shapes}
    runner = Runner(
        cfg,
        budget,
        caches,
        {p.name: p for p in peers},
        _measure.api_overhead_s(cfg.isas[-1]),
        probe_isa=cfg.isas[-1],
        notes=notes,
    )
    total = sum(len(c) for c in cases.values())
    with _progress(console, total, width=48) as advance:
        runner.run(cases, advance)
    bs = _analysis.annotate(runner.records, caches)
    return {
        "schema": "twopass-bench/1",
        "date": dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "python -m twopass bench " + " ".join(argv),
        "dtype": cfg.dtype,
        "machine": info,
        "versions": _peers.versions() | {"twopass": info["versions"]["twopass"]},
        "config": {
            "shapes": [list(s) for s in cfg.shapes],
            "ops": cfg.ops,
            "algorithms": cfg.algorithms,
            "isas": cfg.isas,
            "threads": cfg.threads,
            "quick": cfg.quick,
            "budget": budget.__dict__,
        },
        "peers": {p.name: {"describe": p.describe, "threading": p.threading} for p in peers},
        "api_overhead_s": runner.api_overhead_s,
        "definitions": {
            "bound": _report.BOUND_TEXT,
            "levels": _report.levels_text(caches),
            "traffic": {f"{op} {a}": list(rw) for (op, a), rw in _plan.TRAFFIC.items()},
            "time_ratio": "this median / that median (< 1: faster than that one)",
            "kernel": "twopass's C++ call alone, timed where the Python layer costs > 3% of a call",
        },
        "bounds": _report.bounds_table(runner.records, bs),
        "results": runner.records,
        "notes": runner.notes,
        "load_average": {"before": load_before, "after": _loadavg()},
        "elapsed_s": time.perf_counter() - t_start,
    }


@contextlib.contextmanager
def _progress(console: Any, total: int, width: int) -> Iterator[Callable[[str], None]]:
    """A transient progress bar; yields advance(what): one step done, `what` next."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("bench", total=total)

        def advance(what: str) -> None:
            progress.update(task, description=what)
            progress.advance(task)

        yield advance


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _load_warning(console: Any) -> float | None:
    """Other busy processes skew timings, multi-threaded ones most (a thread waiting at a
    barrier for a descheduled sibling): say so, and record the load with the results."""
    load = _loadavg()
    if load is not None and load > 0.5:
        console.print(
            f"[yellow]warning:[/yellow] load average {load:.2f} before the run: other processes are "
            f"busy; timings (multi-threaded ones most) will suffer"
        )
    return load


def _plot_only(console: Any, path: Path, args: argparse.Namespace) -> int:
    from . import _plots

    doc = json.loads(path.read_text())
    _analysis.ratios(doc["results"])  # with this version's definitions (older runs lack "twopass auto")
    _report.print_report(console, doc)
    out = Path(args.out) if args.out != parser().get_default("out") else path.parent
    for p in _plots.draw_all(doc, out, path.stem):
        console.print(f"plot: {p}")
    return 0


def _tune(console: Any, args: argparse.Namespace, argv: list[str]) -> int:
    """--tune (see _tune's docstring): measure, print the tables and the summary, write the JSON."""

    from twopass import _dispatch

    from . import _tune

    isa = args.isa or _dispatch.isa_supported()[-1]
    _dispatch.isa_code(isa)  # a clear error for an ISA this CPU lacks (or a list: --tune takes one)
    dtypes = _choose(_split(args.dtypes), _tune.TUNE_DTYPES, _tune.TUNE_DTYPES, "--dtypes")
    ops = _choose(_split(args.ops), _tune.TUNE_OPS, _tune.TUNE_OPS, "--ops")
    threads = _threads(args)
    if args.sizes:
        shapes = [_plan.parse_size(s) for s in _split(args.sizes) or []]
    else:
        shapes = list(_tune.QUICK_SHAPES if args.quick else _tune.FULL_SHAPES)
    budget = _fixed_repeats(_tune.QUICK_BUDGET if args.quick else _tune.FULL_BUDGET, args.repeats)
    caches = _dispatch.cache_sizes()
    t0 = time.perf_counter()
    load_before = _load_warning(console)
    with _progress(console, len(dtypes) * len(shapes) * len(threads) * len(ops) * 2, width=56) as advance:
        rounds = _tune.TUNE_ROUNDS if args.quick else _tune.FULL_ROUNDS
        cells = _tune.run(shapes, dtypes, ops, threads, isa, budget, caches, advance, rounds)
    doc = _tune.document(
        cells,
        isa=isa,
        command="python -m twopass bench " + " ".join(argv),
        shapes=shapes,
        dtypes=dtypes,
        ops=ops,
        threads=threads,
        budget=budget,
        rounds=rounds,
        elapsed_s=time.perf_counter() - t0,
        load_average={"before": load_before, "after": _loadavg()},
    )
    _tune.print_report(console, doc)
    stem = f"tune-{doc['date'].replace(':', '').replace('T', '-')}"
    path = Path(args.tune_out) if args.tune_out else Path(args.out) / f"{stem}.json"
    _report.write_json(doc, path)
    console.print(f"JSON: {path}")
    console.print(f"total time: {doc['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
