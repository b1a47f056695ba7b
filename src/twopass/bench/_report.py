"""The terminal report (rich tables) and the JSON file."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import _analysis, _plan
from ._analysis import Bound, Key

BOUND_TEXT = (
    "bound = R x t_read + W x (t_copy - t_read): t_read, t_copy = fastest read and copy passes over the same "
    "buffers, same threads, same cache regime. GB/s = (R + W) x array bytes / median time; % = bound / time. "
    "R, W = whole-array reads and writes the algorithm's passes make (two_pass 2R + 1W, three_pass_reload 3R + 2W; "
    "docs/algorithms.md); a batch out of cache whose "
    "rows fit in half the L3 moves 1R + 1W whatever the algorithm."
)


# Column headers that keep a table within ~120 characters.
SHORT = {"three_pass_reload": "3p reload", "three_pass_recompute": "3p recomp", "onnxruntime": "ort"}


def _fmt_gbps(v: float | None) -> str:
    return "free" if v is None else f"{v:.1f}"


def levels_text(caches: dict[str, int]) -> str:
    parts = ", ".join(f"{k} {_plan.format_bytes(v)}" for k, v in caches.items())
    return (
        f"Caches (one core's view): {parts}. A working set (x + y; logsumexp: x) that fits a level is measured hot "
        f"(same buffers each call); a larger one ('DRAM') cycles over enough buffer sets that >= 2 x L3 = "
        f"{_plan.format_bytes(2 * caches['L3'])} is touched between two uses of a set."
    )


def print_report(console: Any, doc: dict[str, Any]) -> None:

    caches = doc["machine"]["caches"]
    dtypes = doc.get("dtypes", [doc["dtype"]])
    console.rule(f"twopass bench: {doc['machine']['cpu']}, {', '.join(dtypes)}, {doc['date']}")
    console.print(levels_text(caches))
    console.print(f"twopass per-call overhead (a 1-element softmax with out=): {doc['api_overhead_s'] * 1e6:.1f} us")

    console.print(_bandwidth_table(doc))

    res = _analysis.results(doc["results"])
    isas = doc["config"]["isas"]
    best = _analysis.best_isa(isas)
    for dtype in dtypes:
        for threads in doc["config"]["threads"]:
            for op in doc["config"]["ops"]:
                for isa in sorted(isas, key=lambda i: i != best):
                    table = _result_table(res, op, isa, threads, doc, dtype, with_peers=isa == best)
                    if table.row_count:
                        console.print(table)
            table = _entry_table(res, dtype, threads, doc)
            if table.row_count:
                console.print(table)
            table = _roofline_table(res, dtype, threads, doc)
            if table.row_count:
                console.print(table)
    console.print(f"[dim]{BOUND_TEXT}[/dim]")
    console.print(f"[dim]{ROOF_TEXT}[/dim]")
    console.print(
        "[dim]algorithm columns: GB/s and % of the bound. Peer columns: peer time / twopass time, "
        "twopass as a plain call runs it (algorithm='auto': two_pass or three_pass_reload by the "
        "caches, ISA and threads; > 1: twopass is faster); * the peer allocates its output; "
        "¹ a single-threaded library, measured at 1 thread. 3p = three_pass, ort = onnxruntime.[/dim]"
    )
    console.print(f"[dim]{ENTRY_TEXT}[/dim]")
    for line in summary_lines(doc):
        console.print(line)
    for note in doc["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")


ENTRY_TEXT = (
    "entry points: 'out=' = twopass.<op>(x, out=y) into a reused y (GB/s, % of bound); the next columns are "
    "times over that one (> 1: slower): plain = twopass.<op>(x) (a fresh output per call), out=fresh = "
    "out=np.empty(...) per call, tp.torch = twopass.torch.<op>(t, -1), torch plain = torch.<op>(t, -1); "
    "torch/tt = torch plain time / twopass.torch time (> 1: twopass.torch is faster); torch/out= = "
    "torch.<op>(t, -1, out=) time / twopass's out= time; tp.jax = jax.jit(twopass.jax.<op>)(a, axis=-1), "
    "jax/tj = jax.nn.<op> time (jit) / twopass.jax time (> 1: twopass.jax is faster)."
)


def _bandwidth_table(doc: dict[str, Any]) -> Any:
    """One row per (shape, regime): read, copy (R+W) and derived write GB/s per thread count."""
    from rich.table import Table

    threads = doc["config"]["threads"]
    table = Table(title="Bandwidth probes (the bound's inputs), GB/s: read / copy (R+W) / write", title_justify="left")
    for col in ("shape", "dtype", "regime", "sets", *(f"{t} thread{'s' if t > 1 else ''}" for t in threads)):
        table.add_column(col, justify="right")
    by_key = {(tuple(b["shape"]), b.get("dtype", "float32"), b["level"], b["threads"]): b for b in doc["bounds"]}
    order = [tuple(s) for s in doc["config"]["shapes"]]
    dtypes = doc.get("dtypes", [doc["dtype"]])
    keys = sorted(
        {k[:3] for k in by_key},
        key=lambda k: (dtypes.index(k[1]) if k[1] in dtypes else 99, order.index(k[0]), _plan.LEVELS.index(k[2])),
    )
    for shape, dtype, level in keys:
        cells = []
        for t in threads:
            b = by_key.get((shape, dtype, level, t))
            names = ("read_gbps", "copy_gbps", "write_gbps")
            cells.append("-" if b is None else " / ".join(_fmt_gbps(b[k]) for k in names))
        nsets = max(b["nsets"] for k, b in by_key.items() if k[:3] == (shape, dtype, level))
        table.add_row(_plan.format_shape(shape), dtype, level, str(nsets), *cells)
    return table


def _result_table(
    res: list[dict[str, Any]], op: str, isa: str, threads: int, doc: dict[str, Any], dtype: str, with_peers: bool
) -> Any:
    from rich.table import Table

    algos = doc["config"]["algorithms"]
    peer_names = [p for p in doc["peers"] if with_peers]
    title = f"{op} {dtype}, {isa}, {threads} thread{'s' if threads > 1 else ''}"
    table = Table(title=title, title_justify="left")
    table.add_column("shape", justify="right")
    table.add_column("fits", justify="left")
    for a in algos:
        table.add_column(SHORT.get(a, a), justify="right")
    for p in peer_names:
        table.add_column(SHORT.get(p, p), justify="right")
    for shape in doc["config"]["shapes"]:
        members = _analysis.group_members(res, (tuple(shape), op, threads, dtype))
        tp = {r["algorithm"]: r for r in members if r["kind"] == "twopass" and r["isa"] == isa}
        if not tp:
            continue
        base = _analysis.auto_record(members, isa)
        level = next(iter(tp.values()))["level"]
        row = [_plan.format_shape(tuple(shape)), level]
        row += [_cell(tp.get(a)) for a in algos]
        for p in peer_names:
            r = next((m for m in members if m["impl"] == p and m["kind"] == "peer"), None)
            row.append(_peer_cell(r, base, threads))
        table.add_row(*row)
    return table


def _entry_table(res: list[dict[str, Any]], dtype: str, threads: int, doc: dict[str, Any]) -> Any:
    """The entry points of one dtype and thread count: twopass's out= call, then each
    other path's time over it, and torch against twopass.torch (plain and out=)."""
    from rich.table import Table

    best = _analysis.best_isa(doc["config"]["isas"])
    entries = doc["config"].get("entries", [])
    title = f"entry points {dtype}, {best}, {threads} thread{'s' if threads > 1 else ''}"
    table = Table(title=title, title_justify="left")
    cols = ["op", "shape", "fits", "out=", *(SHORT_ENTRY.get(e, e) for e in entries), "torch/tt", "torch/out="]
    cols += ["jax/tj"] if "twopass.jax" in entries else []
    for c in cols:
        table.add_column(c, justify="right")
    if not entries:
        return table
    for op in doc["config"]["ops"]:
        for shape in doc["config"]["shapes"]:
            members = _analysis.group_members(res, (tuple(shape), op, threads, dtype))
            base = _analysis.auto_record(members, best)
            if base is None:
                continue
            by = {m["impl"]: m for m in members if m["kind"] in ("entry", "peer") and m["threads"] == threads}
            row = [op, _plan.format_shape(tuple(shape)), base["level"], _cell(base)]
            for name in entries:
                r = by.get(name)
                row.append("-" if r is None else f"{r['median_s'] / base['median_s']:.2f}x")
            tt, tp, torch_out = by.get("twopass.torch"), by.get("torch plain"), by.get("torch")
            row.append(_vs(tp, tt))
            row.append(_vs(torch_out if torch_out and torch_out["kind"] == "peer" else None, base))
            if "twopass.jax" in entries:
                jax_nn = by.get("jax")
                row.append(_vs(jax_nn if jax_nn and jax_nn["kind"] == "peer" else None, by.get("twopass.jax")))
            table.add_row(*row)
    return table


ROOF_TEXT = (
    "roofline: memory floor = the bound above; compute floor = the same kernel (op, algorithm, ISA, dtype) timed "
    "hot on a buffer of the same row length that stays in the L2, per element, x elements / threads the call runs "
    "on; roof = the higher of the two ('by'); % = roof / time (100% = neither memory nor arithmetic left idle). "
    "Rows: the algorithm auto takes, and two_pass when auto takes another."
)


def _roofline_table(res: list[dict[str, Any]], dtype: str, threads: int, doc: dict[str, Any]) -> Any:
    """Per op and shape, on the best ISA: the algorithm auto takes (and two_pass), its
    time against its memory and compute floors, and the share of the higher one it reaches."""
    from rich.table import Table

    best = _analysis.best_isa(doc["config"]["isas"])
    title = f"roofline {dtype}, {best}, {threads} thread{'s' if threads > 1 else ''} (ms)"
    table = Table(title=title, title_justify="left")
    for c in ("op", "shape", "fits", "algorithm", "time", "memory floor", "compute floor", "by", "% of roof"):
        table.add_column(c, justify="right")
    for op in doc["config"]["ops"]:
        for shape in doc["config"]["shapes"]:
            members = _analysis.group_members(res, (tuple(shape), op, threads, dtype))
            tp = {r["algorithm"]: r for r in members if r["kind"] == "twopass" and r["isa"] == best}
            auto = _analysis.auto_record(members, best)
            if auto is None:
                continue
            rows = [auto] + [tp[a] for a in ("two_pass",) if a in tp and tp[a] is not auto]
            for r in rows:
                if "roof_s" not in r:
                    continue
                frac = r["frac_roof"]
                colour = "green" if frac >= 0.9 else "yellow" if frac >= 0.7 else "red"
                table.add_row(
                    op,
                    _plan.format_shape(tuple(shape)),
                    r["level"],
                    SHORT.get(r["algorithm"], r["algorithm"]) + (" (auto)" if r is auto else ""),
                    f"{r['median_s'] * 1e3:.3g}",
                    "-" if "bound_s" not in r else f"{r['bound_s'] * 1e3:.3g}",
                    f"{r['compute_floor_s'] * 1e3:.3g}",
                    r["roof_by"],
                    f"[{colour}]{frac:.0%}[/{colour}]",
                )
    return table


SHORT_ENTRY = {
    "twopass plain": "plain",
    "twopass out=fresh": "out=fresh",
    "twopass.torch": "tp.torch",
    "twopass.jax": "tp.jax",
}


def _vs(other: dict[str, Any] | None, ours: dict[str, Any] | None) -> str:
    """other's time / ours (> 1: ours is faster), coloured."""
    if other is None or ours is None:
        return "-"
    ratio = other["median_s"] / ours["median_s"]
    colour = "green" if ratio >= 1 else "red"
    return f"[{colour}]{ratio:.2f}x[/{colour}]"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    frac = r.get("frac_bound")
    return f"{r['gbps']:.1f} {frac:4.0%}" if frac is not None else f"{r['gbps']:.1f}"


def _peer_cell(r: dict[str, Any] | None, base: dict[str, Any] | None, threads: int) -> str:
    if r is None or base is None:
        return "-"
    ratio = r["median_s"] / base["median_s"]
    colour = "green" if ratio >= 1 else "red"
    mark = ("*" if r.get("allocates") else "") + ("¹" if r["threads"] != threads else "")
    return f"[{colour}]{ratio:.2f}x[/{colour}]{mark}"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The headline numbers: two_pass against the three-pass reload out of cache, its
    fraction of the bound, and twopass against every peer."""
    res = _analysis.results(doc["results"])
    best = _analysis.best_isa(doc["config"]["isas"])
    lines = ["[bold]Summary[/bold]"]
    for r in res:
        if (
            r["kind"] == "twopass"
            and r["algorithm"] == "two_pass"
            and r["isa"] == best
            and r["level"] == "DRAM"
            and r["op"] == "softmax"
        ):
            reload = next(
                (
                    q
                    for q in res
                    if q["kind"] == "twopass"
                    and q["algorithm"] == "three_pass_reload"
                    and q["isa"] == best
                    and group_eq(q, r)
                ),
                None,
            )
            vs = f"{reload['median_s'] / r['median_s']:.2f}x the speed of three_pass_reload, " if reload else ""
            frac = f"{r['frac_bound']:.0%} of its bound" if "frac_bound" in r else "no bound"
            lines.append(
                f"softmax {r['dtype']} {_plan.format_shape(tuple(r['shape']))} (out of cache), "
                f"{r['threads']}t, {best}: "
                f"two_pass {r['gbps']:.1f} GB/s, {vs}{frac}"
            )
    wins = losses = 0
    worst: list[tuple[float, str]] = []
    for r in res:
        if r["kind"] != "peer" or "twopass auto" not in r.get("time_ratio", {}):
            continue
        ratio = r["time_ratio"]["twopass auto"]  # peer time / twopass time
        if ratio >= 1:
            wins += 1
        else:
            losses += 1
            shape = _plan.format_shape(tuple(r["shape"]))
            worst.append((ratio, f"{r['impl']} {r['op']} {r['dtype']} {shape} {r['threads']}t ({ratio:.2f}x)"))
    if wins + losses:
        lines.append(
            f"twopass (algorithm='auto') faster than the peer in {wins} of {wins + losses} comparisons"
            + (f"; slower: {', '.join(w for _, w in sorted(worst)[:8])}" if worst else "")
        )
    return lines


def group_eq(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["shape"] == b["shape"]
        and a["op"] == b["op"]
        and a["threads"] == b["threads"]
        and a.get("dtype") == b.get("dtype")
    )


def bounds_table(records: list[dict[str, Any]], bs: dict[Key, Bound]) -> list[dict[str, Any]]:
    """The bounds as JSON rows, with the regime's buffer-set count."""
    nsets = {
        (tuple(r["shape"]), r.get("dtype", "float32"), r["threads"], r["level"]): r["nsets"]
        for r in records
        if r["kind"] == "probe" and r["impl"].startswith("copy")
    }
    return [
        {"shape": list(k[0]), "dtype": k[1], "threads": k[2], "level": k[3], "nsets": nsets.get(k, 1), **b.as_dict()}
        for k, b in bs.items()
    ]


# ----------------------------------------------------------------------------------
# What every mode shares: the document's header, where it is saved, how it is read
# back, the progress bar, the machine's load.
# ----------------------------------------------------------------------------------
def header(schema: str, argv: list[str], machine: dict[str, Any]) -> dict[str, Any]:
    """The first keys of every results document (sweep, --tune, --cross-entropy, --device
    cuda, --distributed): which kind, when, the command line, the machine."""
    return {
        "schema": schema,
        "date": dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "python -m twopass bench " + " ".join(argv),
        "machine": machine,
    }


def save(doc: dict[str, Any], out_dir: Path, stem: str) -> Path:
    """Write `doc` to OUT/<stem>-<date>.json; returns the path."""
    path = out_dir / f"{stem}-{doc['date'].replace(':', '').replace('T', '-')}.json"
    write_json(doc, path)
    return path


def load(path: Path) -> dict[str, Any]:
    """A saved results document (any mode), checked to be one."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("twopass-"):
        raise ValueError(f"{path}: not a results file of python -m twopass bench (no twopass-* schema)")
    return doc


@contextlib.contextmanager
def progress(console: Any, total: int, width: int = 48) -> Iterator[Callable[[str], None]]:
    """A transient progress bar; yields advance(what): one step done, `what` next."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("bench", total=total)

        def advance(what: str) -> None:
            bar.update(task, description=what)
            bar.advance(task)

        yield advance


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_warning(console: Any) -> float | None:
    """Other busy processes skew timings, multi-threaded ones most (a thread waiting at a
    barrier for a descheduled sibling): say so, and record the load with the results."""
    load = loadavg()
    if load is not None and load > 0.5:
        console.print(
            f"[yellow]warning:[/yellow] load average {load:.2f} before the run: other processes are "
            f"busy; timings (multi-threaded ones most) will suffer"
        )
    return load


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
