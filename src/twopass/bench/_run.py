"""Run the planned cases, shape by shape, and turn each into a JSON-ready record."""

from __future__ import annotations

import contextlib
import gc
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _measure, _peers, _plan
from ._measure import Budget, Buffers, BufferSet, Timing
from ._plan import Case, Config, Regime

# Also time the bare kernel call when the Python layer's per-call cost is more than
# this fraction of the call: then the kernel's own throughput is worth a separate line.
_KERNEL_WHEN_OVERHEAD_ABOVE = 0.03


@dataclass
class Runner:
    cfg: Config
    budget: Budget
    caches: dict[str, int]
    peers: dict[str, _peers.Peer]
    api_overhead_s: float
    probe_isa: str
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    floors: dict[tuple, float] = field(default_factory=dict)  # compute floors, s per element

    def run(
        self, cases_by_shape: dict[tuple[tuple[int, ...], str], list[Case]], advance: Callable[[str], None]
    ) -> None:
        """cases_by_shape: the cases of each (shape, dtype), run on that pair's buffers."""
        for (shape, dtype), cases in cases_by_shape.items():
            bufs = Buffers(shape, _dtype(dtype))
            refs: dict[str, np.ndarray] = {}  # twopass two_pass results: what peers are checked against
            for case in cases:
                advance(_describe(case))
                rec = self._run_case(case, bufs, refs)
                if rec is not None:
                    self.records.append(rec)
            del bufs, refs
            gc.collect()

    # ------------------------------------------------------------------------------
    def _regime(self, ws: int, level: str | None = None) -> Regime:
        """The op's regime; a probe takes the regime of the ops it bounds (`level`),
        with enough sets that its own working set, cycled, is at least 2x L3."""
        if level is None:
            return _plan.regime(ws, self.caches)
        nsets = max(1, math.ceil(2 * self.caches["L3"] / ws)) if level == "DRAM" else 1
        return Regime(level, nsets)

    def _run_case(self, case: Case, bufs: Buffers, refs: dict[str, np.ndarray]) -> dict[str, Any] | None:
        if case.kind == "probe":
            return self._probe(case, bufs)
        ws = _plan.working_set(case.shape, bufs.dtype.itemsize, case.op)
        reg = self._regime(ws)
        sets = bufs.get(reg.nsets)
        base = _base_record(case, bufs, reg, ws)
        if case.kind == "twopass":
            return self._twopass(case, sets, base)
        if case.kind == "entry":
            return self._entry(case, sets, base, refs)
        return self._peer(case, sets, base, refs)

    def _probe(self, case: Case, bufs: Buffers) -> dict[str, Any]:
        ws = _measure.probe_working_set(case.impl, bufs.nbytes)
        reg = self._regime(ws, case.level)
        calls = _measure.probe_calls(case.impl, bufs.get(reg.nsets), case.threads, self.probe_isa)
        timing = _measure.measure(calls, self.budget)
        rec = _base_record(case, bufs, reg, ws)
        rec["bytes_moved"] = ws
        rec.update(timing.as_dict())
        rec["gbps"] = ws / timing.median_s / 1e9
        return rec

    def _twopass(self, case: Case, sets: list[BufferSet], rec: dict[str, Any]) -> dict[str, Any]:
        calls = _measure.twopass_calls(case.op, case.algorithm, case.isa, case.threads, sets)
        timing = _measure.measure(calls, self.budget)  # twopass failing in its own benchmark: an error
        rec.update(timing.as_dict())
        rec["allocates"] = False
        rec["compute_floor_s"] = self._compute_floor_s(case, sets[0].x.dtype) * sets[0].x.size / _threads_used(case)
        if self.api_overhead_s > _KERNEL_WHEN_OVERHEAD_ABOVE * timing.median_s:
            kcalls = _measure.kernel_calls(case.op, case.algorithm, case.isa, case.threads, sets)
            if kcalls is not None:
                rec["kernel"] = _measure.measure(kcalls, self.budget).as_dict()
        return rec

    def _compute_floor_s(self, case: Case, dtype: np.dtype) -> float:
        """Seconds per element of this op, algorithm and ISA on data that stays in the L2
        (_measure.compute_floor_shape; one thread, hot; the bare kernel call, or where there
        is none the public call less the Python layer's cost): what the arithmetic alone
        costs. Memoised: every shape with the same row length shares it."""
        small = _measure.compute_floor_shape(case.shape, dtype.itemsize, self.caches["L2"])
        key = (case.op, case.algorithm, case.isa, dtype.name, small)
        if key not in self.floors:
            sets = Buffers(small, dtype).get(1)
            calls = _measure.kernel_calls(case.op, case.algorithm, case.isa, 1, sets)
            overhead = 0.0
            if calls is None:
                calls = _measure.twopass_calls(case.op, case.algorithm, case.isa, 1, sets)
                overhead = self.api_overhead_s
            t = _measure.measure(calls, self.budget).median_s
            self.floors[key] = max(t - overhead, 0.0) / math.prod(small)
        return self.floors[key]

    def _entry(
        self, case: Case, sets: list[BufferSet], rec: dict[str, Any], refs: dict[str, np.ndarray]
    ) -> dict[str, Any] | None:
        """twopass's other entry points (_plan.ENTRIES), and torch's plain call."""
        try:
            calls, allocates = _entry_calls(case.impl, case.op, case.threads, sets)
        except ImportError as e:
            self._note(f"{case.impl} skipped: {e}")
            return None
        with _default_threads(case.threads):  # twopass.torch takes twopass's default
            check = _check(case.op, _peers.to_numpy(calls[0]()), self._reference(case, sets[0], refs), sets[0].x)
            timing = _measure.measure(calls, self.budget)
        rec.update(timing.as_dict())
        rec.update(allocates=allocates, check=check)
        if not check["ok"]:
            self._note(f"{case.impl} {case.op} {_plan.format_shape(case.shape)}: {_check_text(check)}")
        return rec

    def _peer(
        self, case: Case, sets: list[BufferSet], rec: dict[str, Any], refs: dict[str, np.ndarray]
    ) -> dict[str, Any] | None:
        peer = self.peers[case.impl]
        try:
            prepared = peer.prepare(case.op, sets, case.threads)
            first = _peers.to_numpy(prepared.calls[0]())
            check = _check(case.op, first, self._reference(case, sets[0], refs), sets[0].x)
            timing: Timing = _measure.measure(prepared.calls, self.budget)
        except _peers.PeerUnsupported as e:
            self._note(f"peer {peer.name} has no {case.op}: {e}")
            return None
        except Exception as e:  # noqa: BLE001 - a peer failing must not stop the run
            self._note(f"peer {peer.name} {case.op} {_plan.format_shape(case.shape)} failed: {type(e).__name__}: {e}")
            return None
        rec.update(timing.as_dict())
        rec.update(allocates=prepared.allocates, note=prepared.note, threading=peer.threading, check=check)
        if not check["ok"]:
            self._note(f"peer {peer.name} {case.op} {_plan.format_shape(case.shape)}: {_check_text(check)}")
        return rec

    def _reference(self, case: Case, s: BufferSet, refs: dict[str, np.ndarray]) -> np.ndarray:
        if case.op not in refs:
            refs[case.op] = _measure.compute(case.op, s.x, algorithm="two_pass", isa=self.cfg.isas[-1])
        return refs[case.op]

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _threads_used(case: Case) -> int:
    """The threads the kernel runs this call on (csrc/threads.h: a batch splits by rows
    with at least MIN_PER_THREAD elements each; one row splits along its axis in chunks
    of at least MIN_PER_CHUNK)."""
    from twopass import _core

    n = case.shape[-1]
    rows = math.prod(case.shape[:-1])
    if rows == 1:
        return max(1, min(case.threads, n // _core.MIN_PER_CHUNK))
    return max(1, min(case.threads, rows * n // _core.MIN_PER_THREAD))


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@contextlib.contextmanager
def _default_threads(threads: int) -> Iterator[None]:
    """The thread count set to `threads` for the calls that cannot pass it: twopass's
    default (_dispatch.default_threads, as TWOPASS_NUM_THREADS would set it for a
    process) and, where torch is loaded, torch's (torch.set_num_threads), which
    twopass.torch follows as torch's own ops do. (twopass.torch used to run on whatever
    count the case before had left: 0.45x and 3.3x the `out=` time at 1 thread on the
    Zen 4 VM, 2026-12-05.)"""
    from twopass import _dispatch

    torch = sys.modules.get("torch")
    saved = _dispatch.default_threads
    saved_torch = torch.get_num_threads() if torch is not None else None
    _dispatch.default_threads = lambda: threads  # type: ignore[assignment]
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        _dispatch.default_threads = saved
        if torch is not None:
            torch.set_num_threads(saved_torch)


def _entry_calls(name: str, op: str, threads: int, sets: list[BufferSet]) -> tuple[list[Callable[[], Any]], bool]:
    """(calls, allocates) of one entry point over each set (_plan.ENTRIES)."""
    import twopass

    fn = getattr(twopass, op)
    if name == "twopass plain":
        return [lambda s=s: fn(s.x, threads=threads) for s in sets], True
    if name == "twopass out=fresh":

        def fresh(s: BufferSet) -> np.ndarray:
            y = _measure.output_of(op, s)
            return fn(s.x, out=np.empty(y.shape, y.dtype), threads=threads)

        return [lambda s=s: fresh(s) for s in sets], True
    if name == "twopass.jax":
        return _jax_calls(op, threads, sets), True
    import torch  # ImportError: the case is skipped with a note

    xs = [_peers.tensor(s.x) for s in sets]
    if name == "twopass.torch":
        import twopass.torch as tt

        tfn = getattr(tt, op)
        return [lambda x=x: tfn(x, -1) for x in xs], True
    if name == "torch plain":  # (run under _default_threads, which sets torch's count)
        tfn = getattr(torch, op)
        return [lambda x=x: tfn(x, -1) for x in xs], True
    raise ValueError(f"unknown entry point {name!r}; known: {', '.join(_plan.ENTRIES)}")


def _jax_calls(op: str, threads: int, sets: list[BufferSet]) -> list[Callable[[], Any]]:
    """twopass.jax.<op> under jit on device copies of the sets, as the "jax" peer runs
    jax.nn (its threads fixed when traced, as a JAX program would)."""
    import jax  # ImportError: the case is skipped with a note
    import jax.numpy as jnp

    import twopass.jax as tj

    fn = getattr(tj, op)
    jitted = jax.jit(lambda x: fn(x, axis=-1, threads=threads))
    xs = [jnp.asarray(s.x) for s in sets]
    return [lambda x=x: jitted(x).block_until_ready() for x in xs]


def _base_record(case: Case, bufs: Buffers, reg: Regime, ws: int) -> dict[str, Any]:
    return {
        "kind": case.kind,
        "impl": case.impl,
        "op": case.op,
        "algorithm": case.algorithm,
        "dtype": bufs.dtype.name,
        "shape": list(case.shape),
        "threads": case.threads,
        "isa": case.isa,
        "level": reg.level,
        "nsets": reg.nsets,
        "working_set_bytes": ws,
    }


def _describe(case: Case) -> str:
    shape = _plan.format_shape(case.shape)
    if case.kind == "probe":
        return f"{shape} {case.dtype} {case.threads}t probe {case.impl} ({case.level})"
    what = f"{case.algorithm} {case.isa}" if case.kind == "twopass" else case.impl
    return f"{shape} {case.dtype} {case.threads}t {case.op} {what}"


def _check_text(check: dict[str, Any]) -> str:
    if check["rel_err"] is None:
        return f"result has the wrong shape ({check['why']})"
    text = f"result differs from twopass's (relative difference {check['rel_err']:.2g})"
    f64 = check.get("rel_err_float64")
    if f64:
        text += f"; against float64: {f64['peer']:.2g} for the peer, {f64['twopass']:.2g} for twopass"
    return text


# Peers are checked against twopass's result; a disagreement is then settled against
# float64 (which of the two is off, and by how much).
_CHECK_TOLERANCE = {"float64": 1e-3, "float32": 1e-3, "float16": 4e-3, "bfloat16": 3e-2}  # halves: a few ulp
_CHECK_POINTS = 1_000_000  # compare at most this many sampled elements


def _check(op: str, got: np.ndarray, ref: np.ndarray, x: np.ndarray) -> dict[str, Any]:
    """Largest relative difference from twopass's result, on evenly sampled points:
    softmax relative to |value| + 1e-3 x the largest value (its tiny entries carry little
    weight); log_softmax and logsumexp relative to |value| + 1."""
    if got.shape != ref.shape:
        return {"ok": False, "rel_err": None, "why": f"shape {got.shape} != {ref.shape}"}
    step = max(1, ref.size // _CHECK_POINTS)
    idx = np.arange(0, ref.size, step)
    r = ref.reshape(-1)[idx].astype(np.float64)
    err = _rel_err(op, got.reshape(-1)[idx], r)
    out: dict[str, Any] = {"ok": bool(err < _CHECK_TOLERANCE.get(got.dtype.name, 1e-3)), "rel_err": err}
    if not out["ok"]:
        exact = _float64_at(op, x, idx)
        out["rel_err_float64"] = {
            "peer": _rel_err(op, got.reshape(-1)[idx], exact),
            "twopass": _rel_err(op, ref.reshape(-1)[idx], exact),
        }
    return out


def _rel_err(op: str, a: np.ndarray, ref: np.ndarray) -> float:
    if not ref.size:
        return 0.0
    scale = np.abs(ref) + (1e-3 * np.max(np.abs(ref)) if op == "softmax" else 1.0)
    return float(np.max(np.abs(a.astype(np.float64) - ref) / scale))


def _float64_at(op: str, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The op computed in float64 (max-shifted), at flat output positions `idx`."""
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=-1, keepdims=True)
    lse = (m + np.log(np.sum(np.exp(x64 - m), axis=-1, keepdims=True))).reshape(-1)
    if op == "logsumexp":
        return lse[idx]
    n = x.shape[-1]
    v = x64.reshape(-1)[idx] - lse[idx // n]
    return np.exp(v) if op == "softmax" else v
