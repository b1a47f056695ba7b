"""PNG plots from the JSON document alone (so `--plot-only` redraws any saved run).

throughput-<isa>-<T>t.png: GB/s against row length (one row, log2 axis), one line per
    algorithm, dashed: the bandwidth bound of that algorithm's traffic; vertical lines
    where the row's working set fills L1d, L2 and L3. The paper's figures, on this machine.
peers-<T>t.png: per shape, twopass (algorithm='auto') and each peer as GB/s of the op's two-pass
    traffic (higher is better), with the two-pass bound as a black tick.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import _analysis, _plan

COLOURS = {
    "two_pass": "tab:blue",
    "three_pass_reload": "tab:red",
    "three_pass_recompute": "tab:orange",
    "online": "tab:green",
}
PEER_COLOURS = ["tab:blue", "tab:gray", "tab:purple", "tab:red", "tab:olive", "tab:cyan", "tab:brown"]


def draw_all(doc: dict[str, Any], outdir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    # The plots show one dtype: the run's first (float32 by default); the tables show all.
    dtype = doc["dtype"]
    doc = doc | {"results": [r for r in doc["results"] if r.get("dtype", "float32") == dtype]}
    paths = []
    threads = min(doc["config"]["threads"])
    for isa in doc["config"]["isas"]:
        p = throughput(doc, isa, threads, outdir / f"{stem}-throughput-{isa}-{threads}t.png")
        if p:
            paths.append(p)
    for t in doc["config"]["threads"]:
        p = peers(doc, t, outdir / f"{stem}-peers-{t}t.png")
        if p:
            paths.append(p)
    return paths


def _rows(doc: dict[str, Any], op: str, isa: str, threads: int, algo: str) -> list[dict[str, Any]]:
    rs = [
        r
        for r in _analysis.results(doc["results"])
        if r["kind"] == "twopass"
        and len(r["shape"]) == 1
        and r["op"] == op
        and r["isa"] == isa
        and r["threads"] == threads
        and r["algorithm"] == algo
    ]
    return sorted(rs, key=lambda r: r["shape"][0])


def throughput(doc: dict[str, Any], isa: str, threads: int, path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ops = [op for op in doc["config"]["ops"] if _rows(doc, op, isa, threads, doc["config"]["algorithms"][0])]
    if not ops:
        return None
    caches = doc["machine"]["caches"]
    itemsize = _plan.ITEMSIZE[doc["dtype"]]
    fig, axes = plt.subplots(
        2, len(ops), figsize=(6.2 * len(ops), 8.4), squeeze=False, sharex="col", height_ratios=(3, 1.6)
    )
    for ax, op in zip(axes[0], ops):
        data_max = bound_max = 0.0
        for algo in doc["config"]["algorithms"]:
            rs = _rows(doc, op, isa, threads, algo)
            if not rs:
                continue
            n = [r["shape"][0] for r in rs]
            colour = COLOURS.get(algo)
            # Small rows: the kernel's own time (the Python layer's per-call cost left out).
            gbps = [r["kernel"]["gbps"] if "kernel" in r else r["gbps"] for r in rs]
            ax.plot(n, gbps, "o-", color=colour, label=algo, lw=1.8, ms=4)
            data_max = max(data_max, *gbps)
            bound = [(x, r["bound_gbps"]) for x, r in zip(n, rs) if r.get("bound_gbps")]
            if bound:
                ax.plot(*zip(*bound), "--", color=colour, lw=1, alpha=0.6)
                bound_max = max(bound_max, *(b for _, b in bound))
            if algo == "two_pass" and any("kernel" in r for r in rs):
                ax.plot(n, [r["gbps"] for r in rs], ":", color="0.35", lw=1.2, label="two_pass incl. Python call")
        ws_per_elem = itemsize * (1 if op == "logsumexp" else 2)
        # Show the bound, unless it is so far above the data (a scalar ISA) that the data
        # would lie flat on the axis: then clip it at 3x the data.
        top = 1.08 * max(data_max * 1.15, min(bound_max, 3 * data_max))
        ax.set_ylim(0, top)
        for level in ("L1d", "L2", "L3"):
            x = caches[level] / ws_per_elem
            ax.axvline(x, color="0.6", lw=0.8)
            ax.text(x, top, f" {level}", va="top", ha="left", fontsize=8, color="0.35")
        ax.set_xscale("log", base=2)
        ax.set_ylabel("GB/s (algorithm's traffic / time)")
        ax.set_title(f"{op}")
        ax.grid(True, which="major", alpha=0.3)
    for ax, op in zip(axes[1], ops):
        _relative_times(ax, doc, op, isa, threads)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Line2D([], [], ls="--", color="0.3", lw=1))
    labels.append("bandwidth bound of the algorithm's traffic")
    fig.legend(handles, labels, fontsize=8, ncol=len(labels), loc="upper center", bbox_to_anchor=(0.5, 0.945))
    fig.suptitle(
        f"twopass {doc['dtype']}, one row, {isa}, {threads} thread{'s' if threads > 1 else ''}; vertical lines: "
        f"where the row's working set fills a cache; {doc['machine']['cpu']}, {doc['date']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.925))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _call_time(r: dict[str, Any]) -> float:
    return r["kernel"]["median_s"] if "kernel" in r else r["median_s"]


def _relative_times(ax: Any, doc: dict[str, Any], op: str, isa: str, threads: int) -> None:
    """time(algorithm) / time(two_pass) against row length: above 1, two_pass is faster."""
    base = {r["shape"][0]: _call_time(r) for r in _rows(doc, op, isa, threads, "two_pass")}
    for algo in doc["config"]["algorithms"]:
        if algo == "two_pass":
            continue
        pts = [
            (r["shape"][0], _call_time(r) / base[r["shape"][0]])
            for r in _rows(doc, op, isa, threads, algo)
            if r["shape"][0] in base
        ]
        if pts:
            ax.plot(*zip(*pts), "o-", color=COLOURS.get(algo), lw=1.5, ms=3)
    ax.axhline(1.0, color=COLOURS["two_pass"], lw=1.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("row length (elements)")
    ax.set_ylabel("time / two_pass time")
    ax.grid(True, which="major", alpha=0.3)


MAX_BAR_GROUPS = 14


def _bar_shapes(shapes: list[list[int]]) -> list[list[int]]:
    """All shapes, or, for a long sweep, the rows of length 4^k and every batch."""
    if len(shapes) <= MAX_BAR_GROUPS:
        return shapes
    return [s for s in shapes if len(s) > 1 or (s[0] & (s[0] - 1) == 0 and s[0].bit_length() % 2 == 1)]


def peers(doc: dict[str, Any], threads: int, path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    import numpy as np

    res = _analysis.results(doc["results"])
    best = _analysis.best_isa(doc["config"]["isas"])
    names = ["twopass"] + list(doc["peers"])
    ops = doc["config"]["ops"]
    panels = []
    for op in ops:
        groups = []
        for shape in _bar_shapes(doc["config"]["shapes"]):
            members = _analysis.group_members(res, (tuple(shape), op, threads))
            tp = next(
                (r for r in members if r["kind"] == "twopass" and r["algorithm"] == "two_pass" and r["isa"] == best),
                None,
            )
            auto = _analysis.auto_record(members, best)
            if tp is None or auto is None:
                continue
            # twopass as a plain call runs it, charged the two-pass traffic as the peers are
            user = auto | {"gbps": tp["traffic"]["bytes"] / auto["median_s"] / 1e9}
            bars = {"twopass": user} | {r["impl"]: r for r in members if r["kind"] == "peer"}
            groups.append((shape, tp, bars))
        if groups:
            panels.append((op, groups))
    present = {name for _, groups in panels for g in groups for name in g[2]}
    names = [n for n in names if n in present]
    if not panels or len(names) == 1:
        return None
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(8.0, 1.3 * len(panels[0][1]) + 3), 3.4 * len(panels) + 0.8), squeeze=False
    )
    width = 0.8 / len(names)
    for ax, (op, groups) in zip(axes[:, 0], panels):
        x = np.arange(len(groups))
        for i, name in enumerate(names):
            vals = [g[2][name]["gbps"] if name in g[2] else math.nan for g in groups]
            label = name if name != "twopass" else f"twopass, algorithm='auto' ({best})"
            ax.bar(
                x + (i - (len(names) - 1) / 2) * width,
                vals,
                width,
                label=label,
                color=PEER_COLOURS[i % len(PEER_COLOURS)],
            )
        ticks = [tp["bound_gbps"] for _, tp, _ in groups if tp.get("bound_gbps")]
        for xi, (_, tp, _) in zip(x, groups):
            if tp.get("bound_gbps"):
                ax.hlines(
                    tp["bound_gbps"],
                    xi - 0.42,
                    xi + 0.42,
                    color="black",
                    lw=1.5,
                    label="bandwidth bound" if xi == 0 else None,
                )
        top = max([*ticks, *(g[2][n]["gbps"] for g in groups for n in g[2])])
        ax.set_ylim(0, top * 1.08)
        ax.set_xticks(x, [f"{_plan.format_shape(tuple(g[0]))}\n{g[1]['level']}" for g in groups], fontsize=8)
        ax.set_ylabel("GB/s (two-pass traffic)")
        ax.set_title(f"{op} (higher is better)", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=len(labels), loc="upper center", bbox_to_anchor=(0.5, 0.955))
    fig.suptitle(
        f"twopass vs peers, {doc['dtype']}, {threads} thread{'s' if threads > 1 else ''} "
        f"(single-threaded libraries at 1); {doc['machine']['cpu']}, {doc['date']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
