"""From timings to GB/s, fractions of the bandwidth bound, and ratios.

The bound. For one shape, thread count and cache regime, the probes give
    t_read  = the fastest read pass over x          (1R of the array),
    t_copy  = the fastest copy pass x -> y          (1R + 1W; with streaming stores if faster),
(fastest: among the probes, run with at most the group's thread count)
    t_write = t_copy - t_read                       (one write, read-for-ownership included
                                                     unless the stores stream),
and an implementation that must move R reads and W writes of the array takes at least
    t_bound = R * t_read + W * t_write.
"fraction of bound" is t_bound / t_measured (1.0 = at the speed of memory); "GB/s" is
(R + W) * array bytes / t_measured. Peers are charged twopass's two-pass traffic for the
op (the least any implementation here needs), so their numbers compare directly.

The roofline. t_bound is the memory floor; the compute floor t_compute is the same
kernel (op, algorithm, ISA, dtype) timed hot on a buffer of the same row length that
stays in the L2, per element, times the elements, over the threads the call runs on. A
call takes at least max(t_bound, t_compute) (loads fully overlapped with arithmetic);
"fraction of roof" is that over t_measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import _measure, _plan

Key = tuple[tuple[int, ...], str, int, str]  # (shape, dtype, threads, level)


@dataclass(frozen=True)
class Bound:
    read_s: float
    copy_s: float
    nbytes: int  # bytes of the array (one R or one W)

    @property
    def write_s(self) -> float:
        # A copy no slower than a read (possible in cache) leaves the write "free": clamp.
        return max(self.copy_s - self.read_s, 0.0)

    def time(self, reads: int, writes: int) -> float:
        return reads * self.read_s + writes * self.write_s

    def as_dict(self) -> dict[str, float]:
        return {
            "read_s": self.read_s,
            "copy_s": self.copy_s,
            "write_s": self.write_s,
            "read_gbps": self.nbytes / self.read_s / 1e9,
            "copy_gbps": 2 * self.nbytes / self.copy_s / 1e9,
            "write_gbps": self.nbytes / self.write_s / 1e9 if self.write_s > 0 else None,  # None: "free"
        }


def bounds(records: list[dict[str, Any]]) -> dict[Key, Bound]:
    """Per (shape, dtype, threads, level): the fastest read and copy probes run with at
    most that many threads (a pool's hand-off can cost more than a small in-cache pass)."""
    probes = [r for r in records if r["kind"] == "probe"]
    keys = {(tuple(r["shape"]), _dtype(r), r["threads"], r["level"]) for r in probes}
    out: dict[Key, Bound] = {}
    for shape, dtype, threads, level in keys:
        best: dict[str, float] = {}
        nbytes = 0
        for r in probes:
            if tuple(r["shape"]) == shape and _dtype(r) == dtype and r["level"] == level and r["threads"] <= threads:
                fam = _measure.probe_family(r["impl"])
                best[fam] = min(best.get(fam, math.inf), r["median_s"])
                nbytes = r["bytes_moved"] // (1 + _measure.PROBE_TRAFFIC[fam][1])
        if "read" in best and "copy" in best:
            out[(shape, dtype, threads, level)] = Bound(best["read"], best["copy"], nbytes)
    return out


def _dtype(r: dict[str, Any]) -> str:
    return r.get("dtype", "float32")  # (runs saved before --dtypes: float32)


def annotate(records: list[dict[str, Any]], caches: dict[str, int]) -> dict[Key, Bound]:
    """Add traffic, GB/s, bound and fraction of bound to every result record, and the
    time ratios within each (shape, op, threads) group. Returns the bounds."""
    bs = bounds(records)
    for r in results(records):
        _annotate_one(r, bs, caches)
    ratios(records)
    return bs


def results(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] != "probe"]


def _annotate_one(r: dict[str, Any], bs: dict[Key, Bound], caches: dict[str, int]) -> None:
    shape = tuple(r["shape"])
    itemsize = _plan.ITEMSIZE[r["dtype"]]
    nbytes = math.prod(shape) * itemsize
    if r["kind"] == "entry":  # what algorithm="auto" runs
        algo = auto_algorithm(r["op"], r["dtype"], shape, r["threads"], r["isa"])
    else:
        algo = r["algorithm"] if r["kind"] == "twopass" else _plan.PEER_ALGORITHM
    reads, writes, basis = _plan.traffic(r["op"], algo, shape, itemsize, r["level"], caches, r["threads"])
    moved = (reads + writes) * nbytes
    r["traffic"] = {"reads": reads, "writes": writes, "basis": basis, "bytes": moved}
    r["gbps"] = moved / r["median_s"] / 1e9
    if "kernel" in r:
        r["kernel"]["gbps"] = moved / r["kernel"]["median_s"] / 1e9
    b = bs.get((shape, r["dtype"], r["threads"], r["level"]))
    if b is not None:
        t = b.time(reads, writes)
        r["bound_s"] = t
        r["bound_gbps"] = moved / t / 1e9 if t > 0 else None
        r["frac_bound"] = t / r["median_s"]
    if "compute_floor_s" in r:  # the roofline: the higher of the two floors, and the share reached
        roof = max(r.get("bound_s", 0.0), r["compute_floor_s"])
        r["roof_s"] = roof
        r["roof_by"] = "compute" if r["compute_floor_s"] > r.get("bound_s", 0.0) else "memory"
        r["frac_roof"] = roof / r["median_s"]


def group_key(r: dict[str, Any]) -> tuple[tuple[int, ...], str, int, str]:
    return tuple(r["shape"]), r["op"], r["threads"], _dtype(r)


def auto_algorithm(op: str, dtype: str, shape: tuple[int, ...], threads: int, isa: str) -> str:
    """The algorithm a plain call (algorithm="auto") takes for an array of this shape
    (rows along the last axis) on `threads` threads and `isa`, by the installed
    library's rule; logsumexp is always one pass."""
    import numpy as np

    if op == "logsumexp":
        return "two_pass"
    if dtype == "bfloat16":  # (NumPy knows the name once ml_dtypes registers its type)
        import ml_dtypes

        np_dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        np_dtype = np.dtype(dtype)
    return _measure.auto_algorithm(op, np_dtype, shape[-1], math.prod(shape), threads, isa)


def auto_record(members: list[dict[str, Any]], isa: str) -> dict[str, Any] | None:
    """twopass as users call it: the record, on `isa`, of the algorithm algorithm="auto"
    takes for this group's rows (two_pass when that one was not measured)."""
    tp = {r["algorithm"]: r for r in members if r["kind"] == "twopass" and r["isa"] == isa}
    if not tp:
        return None
    r0 = next(iter(tp.values()))
    pick = auto_algorithm(r0["op"], r0["dtype"], tuple(r0["shape"]), r0["threads"], isa)
    return tp.get(pick) or tp.get("two_pass")


def ratios(records: list[dict[str, Any]]) -> None:
    """time_ratio[name] = this time / name's time, for twopass two_pass and twopass auto
    (same ISA; best ISA for peers and entries), every peer and every entry point of the
    group (same shape, op, threads and dtype; < 1: faster than that one)."""
    res = results(records)
    groups = sorted({group_key(r) for r in res}, key=str)
    for key in groups:
        members = group_members(res, key)
        base = {r["isa"]: r for r in members if r["kind"] == "twopass" and r["algorithm"] == "two_pass"}
        best_isa_ = max(base, key=_isa_rank) if base else None
        best_base = base[best_isa_] if base else None
        autos = {isa: auto_record(members, isa) for isa in base}
        best_auto = autos.get(best_isa_) if base else None
        peers = {r["impl"]: r for r in members if r["kind"] in ("peer", "entry")}
        for r in members:
            if tuple(r["shape"]) != key[0] or r["threads"] != key[2] or r["op"] != key[1]:
                continue  # a single-threaded peer shown in a larger group: ratios from its own
            own = r["kind"] == "twopass"
            ratio = {}
            for name, ref in (
                ("twopass two_pass", base.get(r["isa"], best_base) if own else best_base),
                ("twopass auto", autos.get(r["isa"], best_auto) if own else best_auto),
            ):
                if ref is not None:
                    ratio[name] = r["median_s"] / ref["median_s"]
            ratio.update({name: r["median_s"] / p["median_s"] for name, p in peers.items()})
            r["time_ratio"] = ratio


def group_members(res: list[dict[str, Any]], key: tuple) -> list[dict[str, Any]]:
    """The results of one (shape, op, threads[, dtype]) group, plus the single-threaded
    peers (measured once, in the smallest group) when this is a larger group. Without a
    dtype: every dtype's (callers that filtered the records to one)."""
    shape, op, threads, *rest = key
    same = [r for r in res if tuple(r["shape"]) == shape and r["op"] == op and (not rest or _dtype(r) == rest[0])]
    members = [r for r in same if r["threads"] == threads]
    have = {r["impl"] for r in members if r["kind"] == "peer"}
    members += [r for r in same if r.get("threading") == "one" and r["threads"] != threads and r["impl"] not in have]
    return members


_ISA_ORDER = ("scalar", "neon", "avx2", "avx512")


def _isa_rank(isa: str) -> int:
    return _ISA_ORDER.index(isa) if isa in _ISA_ORDER else -1


def best_isa(isas: list[str]) -> str:
    return max(isas, key=_isa_rank)
