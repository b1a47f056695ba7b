"""The benchmark's machinery on tiny sizes: schema, traffic, regimes, bounds, plots, --tune.

Fast (seconds): tiny shapes, 2-3 repeats. Peers that are not installed are skipped by
the benchmark itself (and the checks below only look at the ones that ran).
"""

from __future__ import annotations

import io
import json
import math
import os
import time

import numpy as np
import pytest

pytest.importorskip("rich")

import twopass  # noqa: E402
from twopass.bench import _analysis, _cli, _measure, _plan, _run, _tune  # noqa: E402

BEST = twopass.info()["isa_supported"][-1]


def _finite_positive(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# ----------------------------------------------------------------------------------
# Pure parts: sizes, traffic, regimes, the --tune helpers.
# ----------------------------------------------------------------------------------
def test_parse_and_format_sizes():
    assert _plan.parse_size("16M") == (1 << 24,)
    assert _plan.parse_size("4096x4096") == (4096, 4096)
    assert _plan.parse_size("32x128K") == (32, 128 << 10)
    assert _plan.format_shape((1 << 24,)) == "16M"
    assert _plan.format_shape((32, 128256)) == "32x128256"
    for bad in ("", "x4", "1x2x3", "0", "12Q"):
        with pytest.raises(ValueError):
            _plan.parse_size(bad)


def test_traffic_table_covers_every_op_and_algorithm():
    for op in _plan.OPS:
        for algo in _plan.ALGORITHMS:
            reads, writes = _plan.TRAFFIC[(op, algo)]
            assert reads >= 1
            assert writes == 0 if op == "logsumexp" else 1 <= writes <= 2
    # The paper's counts: two-pass 2R+1W, three-pass reload 3R+2W; logsumexp one read.
    assert _plan.TRAFFIC[("softmax", "two_pass")] == (2, 1)
    assert _plan.TRAFFIC[("softmax", "three_pass_reload")] == (3, 2)
    assert _plan.TRAFFIC[("logsumexp", "two_pass")] == (1, 0)


CACHES = {"L1d": 32 << 10, "L2": 512 << 10, "L3": 32 << 20}


def test_regimes_cycle_enough_buffers_to_leave_the_cache():
    assert _plan.regime(16 << 10, CACHES) == _plan.Regime("L1d", 1)
    assert _plan.regime(32 << 20, CACHES) == _plan.Regime("L3", 1)
    # Out of cache: the sets cycled through touch >= 2x L3 between two uses of one set.
    for ws in (33 << 20, 40 << 20, 64 << 20, 256 << 20):
        r = _plan.regime(ws, CACHES)
        assert r.level == "DRAM" and r.nsets * ws >= 2 * CACHES["L3"]


def test_batches_of_cached_rows_move_each_byte_once():
    f4 = 4
    assert _plan.traffic("softmax", "three_pass_reload", (4096, 4096), f4, "DRAM", CACHES, 1)[:2] == (1, 1)
    assert _plan.traffic("logsumexp", "three_pass_reload", (4096, 4096), f4, "DRAM", CACHES, 2)[:2] == (1, 0)
    assert _plan.traffic("softmax", "three_pass_reload", (4096,), f4, "L1d", CACHES, 1)[:2] == (3, 2)


def test_reload_traffic_beyond_its_scratch_row():
    """Rows longer than the reload's scratch row: float32 and float64 fuse its first two
    passes (2R + 2W), halves recompute exp in the last pass (3R + 1W)."""
    import twopass

    assert _plan.RELOAD_SCRATCH_BYTES == twopass._core.RELOAD_SCRATCH_BYTES
    assert _plan.RELOAD_WIDE_ROW == twopass._core.RELOAD_WIDE_ROW_ELEMENTS
    assert _plan.traffic("softmax", "three_pass_reload", (1 << 24,), 4, "DRAM", CACHES, 1)[:2] == (2, 2)
    assert _plan.traffic("softmax", "three_pass_reload", (1 << 24,), 8, "DRAM", CACHES, 1)[:2] == (2, 2)
    assert _plan.traffic("softmax", "three_pass_reload", (1 << 24,), 2, "DRAM", CACHES, 1)[:2] == (3, 1)
    assert _plan.traffic("softmax", "three_pass_reload", (32, 128256), 4, "L3", CACHES, 1)[:2] == (2, 2)
    assert _plan.traffic("softmax", "three_pass_reload", (4096,), 2, "L1d", CACHES, 1)[:2] == (3, 2)
    assert _plan.traffic("log_softmax", "three_pass_reload", (1 << 24,), 4, "DRAM", CACHES, 1)[:2] == (3, 1)


def test_cold_nsets_touch_twice_the_l3_between_uses():
    l3 = CACHES["L3"]
    assert _tune.cold_nsets(8 << 10, l3) == 8192  # a 1K float32 row: x + y = 8 KiB
    assert _tune.cold_nsets(48 << 20, l3) == 2
    assert _tune.cold_nsets(64 << 20, l3) == 1  # already 2x L3: one set, cold = hot
    assert _tune.cold_nsets(1 << 30, l3) == 1
    for ws in (1, 1000, 8 << 10, 3 << 20, 31 << 20, 33 << 20, 63 << 20):
        k = _tune.cold_nsets(ws, l3)
        assert k * ws >= 2 * l3 and (k - 1) * ws < 2 * l3, ws  # enough sets, and no more
    assert _tune.nsets("hot", 8 << 10, l3) == 1
    assert _tune.nsets("cold", 8 << 10, l3) == 8192
    with pytest.raises(ValueError):
        _tune.nsets("warm", 8 << 10, l3)


def test_auto_over_best_and_choice():
    assert _tune.auto_over_best({"two_pass": 2.0, "three_pass_reload": 1.0, "auto": 1.5}) == 1.5
    assert _tune.auto_over_best({"two_pass": 1.0, "three_pass_reload": 4.0, "auto": 1.0}) == 1.0
    assert _tune.auto_over_best({"two_pass": 3.0, "three_pass_reload": 2.0, "auto": 1.0}) == 0.5  # noise: auto faster
    a, b = np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-15])
    assert _tune.auto_choice(a.copy(), {"two_pass": a, "three_pass_reload": b}) == "two_pass"
    assert _tune.auto_choice(b.copy(), {"two_pass": a, "three_pass_reload": b}) == "three_pass_reload"
    assert _tune.auto_choice(a.copy(), {"two_pass": a, "three_pass_reload": a.copy()}) == "either"
    assert _tune.auto_choice(a + 1, {"two_pass": a, "three_pass_reload": b}) == "neither"


def _fake_cell(ratio: float, shape=(1024,), regime="hot", threads=1) -> dict:
    med = {"two_pass": 1e-3, "three_pass_reload": 2e-3, "auto": ratio * 1e-3}
    return {
        "dtype": "float32",
        "op": "softmax",
        "shape": list(shape),
        "threads": threads,
        "regime": regime,
        "nsets": 1,
        "median_s": med,
        "auto_choice": "two_pass",
        "auto_over_best": _tune.auto_over_best(med),
        "faster": "two_pass",
        "same_as_hot": False,
    }


def test_spread_asks_for_more_rounds_only_when_a_median_is_slowed():
    assert _tune.spread({"a": [1.0, 1.0, 1.0], "b": [2.0, 2.1, 2.0]}) == pytest.approx(1.0)
    assert _tune.spread({"a": [1.0, 9.0, 1.05]}) == pytest.approx(1.05)  # one slow round: the median is fine
    assert _tune.spread({"a": [1.0, 9.0, 8.0], "b": [1.0, 1.0, 1.0]}) == pytest.approx(8.0)  # two of three


def test_time_variants_adds_rounds_while_a_slow_spell_holds_the_median(monkeypatch):
    """A spell that slows every call of the first two rounds 10x: three rounds leave
    the medians in it, so more rounds run, until fast rounds are the majority."""
    state = {"measurements": 0, "slow": range(1, 7)}  # rounds 1 and 2 (three variants each)

    def fake_measure(calls, budget):
        state["measurements"] += 1
        return _measure.Timing([1e-2 if state["measurements"] in state["slow"] else 1e-3], 1)

    monkeypatch.setattr(_measure, "measure", fake_measure)
    monkeypatch.setattr(_measure, "twopass_calls", lambda *a: [lambda: None])
    per_round = _tune.time_variants("softmax", BEST, 1, [], TINY)
    assert all(len(v) == 5 for v in per_round.values())  # 2 slow + 3 fast: the median is fast
    assert all(np.median(v) == 1e-3 for v in per_round.values())
    state.update(measurements=0, slow=range(4, 1000))  # one fast round, then a spell past MAX_ROUNDS
    per_round = _tune.time_variants("softmax", BEST, 1, [], TINY)
    assert all(len(v) == _tune.MAX_ROUNDS for v in per_round.values())
    assert _tune.spread(per_round) > _tune.SPREAD  # reported as noisy
    state.update(measurements=0, slow=range(0))  # no spell: TUNE_ROUNDS
    assert all(len(v) == _tune.TUNE_ROUNDS for v in _tune.time_variants("softmax", BEST, 1, [], TINY).values())


def test_tune_summary_finds_the_worst_cell():
    cells = [
        _fake_cell(1.0),
        _fake_cell(1.2, shape=(32, 128256), regime="cold", threads=2),
        _fake_cell(1.05, shape=(4096,)),
        _fake_cell(1.11, shape=(1 << 24,)),
        _fake_cell(1.10, shape=(1 << 20,)),  # at the limit: not over
    ]
    s = _tune.summary(cells)
    assert s["cells"] == 5 and s["over"] == 2 and s["wrong_picks"] == 0
    assert s["worst"] == pytest.approx(1.2)
    assert s["worst_cell"] == "float32 softmax 32x128256 2 threads cold"
    assert s["over_cells"] == ["float32 softmax 32x128256 2 threads cold", "float32 softmax 16M 1 thread hot"]
    assert s["over_text"][0] == (
        "float32 softmax 32x128256 2 threads cold: 1.20, auto ran two_pass (two_pass measured faster, by 2.000x): "
        "auto's own time"
    )
    wrong = _fake_cell(1.5)
    wrong["auto_choice"] = "three_pass_reload"
    s = _tune.summary([*cells, wrong])
    assert s["over"] == 3 and s["wrong_picks"] == 1
    assert s["over_text"][-1] == (
        "float32 softmax 1K 1 thread hot: 1.50, wrong pick: auto ran three_pass_reload, two_pass 2.000x faster"
    )
    assert _tune.summary([])["cells"] == 0
    assert _tune.summary(cells[:1])["over"] == 0


def test_tune_table_marks_cells_over_the_limit():
    from rich.console import Console

    cells = [_fake_cell(1.0, regime=r) for r in ("hot", "cold")] + [
        _fake_cell(1.25, shape=(4096,), regime="hot"),
        _fake_cell(1.0, shape=(4096,), regime="cold"),
    ]
    doc = {
        "config": {
            "dtypes": ["float32"],
            "ops": ["softmax"],
            "threads": [1],
            "shapes": [[1024], [4096]],
            "max_rounds": 9,
        },
        "results": cells,
    }
    (table,) = _tune.tables(doc)
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="standard")
    console.print(table)
    text = console.file.getvalue()
    assert "1.25 2p" in text and "1.00 2p" in text
    assert table.row_count == 2 and len(table.columns) == 1 + 2 * 3
    assert text.count("31m") == 1  # one red cell (ANSI red foreground): 1.25


def test_bound_model():
    b = _analysis.Bound(read_s=1.0, copy_s=2.5, nbytes=10**9)
    assert b.write_s == 1.5
    assert b.time(2, 1) == 3.5  # two-pass: 2R + 1W
    assert _analysis.Bound(1.0, 0.9, 1).write_s == 0.0  # a copy faster than a read: clamped


# ----------------------------------------------------------------------------------
# The run itself, on tiny shapes.
# ----------------------------------------------------------------------------------
TINY = _measure.Budget(min_repeat_s=2e-4, per_case_s=0.0, min_repeats=3, max_repeats=3)


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--sizes", "1K,4x256", "--threads", "1,2", "--isa", BEST, "--repeats", "3", "--out", str(out), "--no-plots"]
    assert _cli.main([*argv, "--dtypes", "float32"]) == 0
    (path,) = out.glob("bench-*.json")
    d = json.loads(path.read_text())
    d["_path"] = str(path)
    return d


def test_json_schema(doc):
    assert doc["schema"] == "twopass-bench/1"
    for key in (
        "date",
        "command",
        "machine",
        "versions",
        "config",
        "peers",
        "bounds",
        "results",
        "notes",
        "definitions",
        "api_overhead_s",
        "elapsed_s",
    ):
        assert key in doc, key
    assert set(doc["machine"]["caches"]) >= {"L1d", "L2", "L3"}
    assert doc["config"]["isas"] == [BEST] and doc["config"]["threads"] == [1, 2]
    res = _analysis.results(doc["results"])
    tp = [r for r in res if r["kind"] == "twopass"]
    # every op x algorithm x shape x thread count was measured
    assert len(tp) == 3 * 4 * 2 * 2
    assert doc["dtypes"] == ["float32"] and {r["dtype"] for r in doc["results"]} == {"float32"}
    # and every entry point (twopass.torch and torch's plain call where torch is installed)
    entries = {r["impl"] for r in res if r["kind"] == "entry"}
    assert entries == set(doc["config"]["entries"])
    assert {"twopass plain", "twopass out=fresh"} <= entries
    assert len([r for r in res if r["kind"] == "entry"]) == len(entries) * 3 * 2 * 2
    for r in doc["results"]:
        assert len(r["times_s"]) == 3 and r["calls_per_repeat"] >= 1
        assert r["p20_s"] <= r["median_s"] <= r["p80_s"]
        assert r["level"] in _plan.LEVELS and r["nsets"] >= 1


def test_bandwidth_bounds_and_ratios_are_positive_and_finite(doc):
    assert doc["bounds"], "no bandwidth bound measured"
    for b in doc["bounds"]:
        assert _finite_positive(b["read_gbps"]) and _finite_positive(b["copy_gbps"])
    res = _analysis.results(doc["results"])
    for r in res:
        assert _finite_positive(r["gbps"]), r
        assert _finite_positive(r["frac_bound"]), r
        assert r["traffic"]["reads"] >= 1
        assert r["time_ratio"], r
        assert all(_finite_positive(v) for v in r["time_ratio"].values()), r
        if r["kind"] == "twopass" and r["algorithm"] == "two_pass":
            assert r["time_ratio"]["twopass two_pass"] == 1.0
        if r["kind"] in ("twopass", "peer", "entry"):  # every path against every entry point
            assert set(doc["config"]["entries"]) <= set(r["time_ratio"]), r
        members = _analysis.group_members(res, _analysis.group_key(r))
        if r["kind"] == "twopass" and r is _analysis.auto_record(members, r["isa"]):
            assert r["time_ratio"]["twopass auto"] == 1.0


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("threads", [1, 2])
def test_peers_compare_against_what_a_plain_call_runs(op, threads):
    """The peer columns use twopass as users call it: the record of the algorithm
    algorithm="auto" takes for that shape, thread count and ISA (the library's rule, on
    both sides of its crossovers); logsumexp is always the one-pass two_pass."""
    for shape in ([1, 256], [1, 1 << 20], [1, 1 << 24], [4096, 4096], [64, 262144]):
        members = [
            {"kind": "twopass", "isa": BEST, "op": op, "dtype": "float32", "shape": shape, "algorithm": a, "threads": t}
            for a in ("two_pass", "three_pass_reload", "online")
            for t in (threads,)
        ]
        n, size = shape[-1], shape[0] * shape[-1]
        f32 = np.dtype("float32")
        want = "two_pass" if op == "logsumexp" else _measure.auto_algorithm(op, f32, n, size, threads, BEST)
        assert _analysis.auto_record(members, BEST)["algorithm"] == want, (shape, threads)


def test_peers_checked_against_twopass(doc):
    for r in doc["results"]:
        if r["kind"] in ("peer", "entry"):
            assert r["check"]["ok"], r
            assert isinstance(r["allocates"], bool)
        if r["kind"] == "entry":
            assert r["allocates"] and r["algorithm"] == "auto"


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """The sweep over float32, bfloat16 and float16 (the default dtypes) on one tiny shape."""
    out = tmp_path_factory.mktemp("bench-halves")
    argv = ["--sizes", "2x512", "--threads", "1", "--isa", BEST, "--repeats", "2", "--out", str(out), "--no-plots"]
    assert _cli.main([*argv, "--algorithms", "two_pass,three_pass_reload"]) == 0
    (path,) = out.glob("bench-*.json")
    d = json.loads(path.read_text())
    d["_path"] = str(path)
    return d


def test_every_dtype_has_its_cases_bytes_and_ratios(halves):
    doc = halves
    assert doc["dtypes"] == list(_plan.DEFAULT_DTYPES) and doc["dtype"] == "float32"
    res = _analysis.results(doc["results"])
    for dtype in _plan.DEFAULT_DTYPES:
        mine = [r for r in res if r["dtype"] == dtype]
        tp = [r for r in mine if r["kind"] == "twopass"]
        assert len(tp) == 3 * 2, dtype  # ops x algorithms
        for r in mine:
            # bytes from the dtype's element size: halves move half float32's
            assert (
                r["traffic"]["bytes"]
                == (r["traffic"]["reads"] + r["traffic"]["writes"]) * 1024 * (_plan.ITEMSIZE[dtype])
            ), r
            assert _finite_positive(r["gbps"]) and r["time_ratio"], r
        assert any(b["dtype"] == dtype for b in doc["bounds"])  # probes on the dtype's own buffers
        entries = {r["impl"]: r for r in mine if r["kind"] == "entry" and r["op"] == "softmax"}
        assert set(entries) == set(doc["config"]["entries"])
        if "twopass.torch" in entries and "torch plain" in entries:
            tt = entries["twopass.torch"]
            assert _finite_positive(tt["time_ratio"]["torch plain"])  # the ratio the README reports
        if "twopass.jax" in entries and "jax" in doc["peers"]:
            assert _finite_positive(entries["twopass.jax"]["time_ratio"]["jax"])
    # torch runs every dtype; NumPy and SciPy have no bfloat16 arithmetic: skipped with a note
    peers = {(r["impl"], r["dtype"]) for r in res if r["kind"] == "peer"}
    if "torch" in doc["peers"]:
        assert {("torch", d) for d in _plan.DEFAULT_DTYPES} <= peers
    if "numpy" in doc["peers"]:
        assert ("numpy", "bfloat16") not in peers and ("numpy", "float16") in peers
        assert any("numpy has no bfloat16" in n for n in doc["notes"])


def test_report_shows_every_dtype_and_the_entry_table(halves):
    from rich.console import Console

    from twopass.bench import _report

    console = Console(file=io.StringIO(), width=220)
    _report.print_report(console, halves)
    text = console.file.getvalue()
    for dtype in _plan.DEFAULT_DTYPES:
        assert f"softmax {dtype}, {BEST}, 1 thread" in text
        assert f"entry points {dtype}, {BEST}, 1 thread" in text
        assert f"roofline {dtype}, {BEST}, 1 thread" in text
    assert "torch/tt" in text and "out=fresh" in text
    if "twopass.jax" in halves["config"]["entries"]:  # jax installed: twopass.jax against jax.nn
        assert "jax/tj" in text and "tp.jax" in text
    assert "compute floor" in text and "% of roof" in text


def test_plot_only_redraws(doc, tmp_path):
    pytest.importorskip("matplotlib")
    assert _cli.main(["--plot-only", doc["_path"], "--out", str(tmp_path)]) == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert any("throughput" in p for p in pngs)
    if doc["peers"]:
        assert any("peers" in p for p in pngs)
    for p in tmp_path.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_of_cache_path_with_small_fake_caches():
    """With a pretend 24 KiB L3, a 4x1024 float32 softmax (x + y = 32 KiB) is "DRAM":
    two cycled sets, probes under the same regime, and the row-in-cache traffic rule;
    its logsumexp (x = 16 KiB) stays in "L3", with probes of its own regime."""
    caches = {"L1d": 1 << 10, "L2": 4 << 10, "L3": 24 << 10}
    cfg = _plan.Config(
        shapes=[(4, 1024)],
        ops=["softmax", "logsumexp"],
        algorithms=["two_pass", "online"],
        isas=[BEST],
        threads=[1],
        peers=False,
        repeats=3,
        quick=True,
    )
    cases = {(s, "float32"): _plan.plan_shape(cfg, s, caches, "float32", _measure.PROBES, {}) for s in cfg.shapes}
    runner = _run.Runner(cfg, TINY, caches, {}, api_overhead_s=0.0, probe_isa=BEST)
    runner.run(cases, lambda what: None)
    bounds = _analysis.annotate(runner.records, caches)
    assert {k[3] for k in bounds} == {"DRAM", "L3"}
    res = _analysis.results(runner.records)
    soft = [r for r in res if r["op"] == "softmax"]
    assert all(r["level"] == "DRAM" and r["nsets"] == 2 for r in soft)
    assert soft[0]["traffic"]["basis"] == "row in cache"
    assert (soft[0]["traffic"]["reads"], soft[0]["traffic"]["writes"]) == (1, 1)
    assert all(r["level"] == "L3" and r["nsets"] == 1 for r in res if r["op"] == "logsumexp")
    assert all(_finite_positive(r["frac_bound"]) for r in res)
    # the roofline: a compute floor from the same kernel in the (pretend 4 KiB) L2, per
    # element, scaled to the 4096 elements; the roof is the higher floor
    for r in res:
        assert _finite_positive(r["compute_floor_s"]) and _finite_positive(r["frac_roof"])
        assert r["roof_s"] == max(r["bound_s"], r["compute_floor_s"])
        assert r["roof_by"] == ("compute" if r["compute_floor_s"] > r["bound_s"] else "memory")
    small = {k[4] for k in runner.floors}
    assert small == {(256,)}, "a 1024-float row does not fit half of 4 KiB with its y: one row of 256"


def test_compute_floor_shape_keeps_the_row_length_and_fits_half_the_l2():
    l2 = 1 << 20
    assert _measure.compute_floor_shape((4096, 4096), 4, l2) == (16, 4096)  # x + y of 16 rows: 512 KiB
    assert _measure.compute_floor_shape((32, 128256), 4, l2) == (65536,)  # a row longer than fits: one shorter row
    assert _measure.compute_floor_shape((1 << 24,), 2, l2) == (131072,)
    assert _measure.compute_floor_shape((1000,), 4, l2) == (1000,)
    assert _measure.compute_floor_shape((3, 10), 8, l2) == (3, 10)  # never more rows than the shape has
    for shape, size in (((4096, 4096), 4), ((65536, 64), 8), ((1 << 26,), 2)):
        small = _measure.compute_floor_shape(shape, size, l2)
        assert 2 * math.prod(small) * size <= l2 // 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kernel_call_of_halves_matches_public_path(dtype):
    """Halves run through run_ptr (raw pointers): the same bits as the public path."""
    b = _measure.Buffers((3, 100), _run._dtype(dtype))
    sets = b.get(1)
    for op in ("softmax", "logsumexp"):
        calls = _measure.kernel_calls(op, "two_pass", BEST, 1, sets)
        assert calls is not None
        out = _measure.output_of(op, sets[0])
        out[...] = 0
        calls[0]()
        kw = {} if op == "logsumexp" else {"algorithm": "two_pass"}
        want = getattr(twopass, op)(sets[0].x, **kw)
        np.testing.assert_array_equal(out.view(np.uint16), np.asarray(want).view(np.uint16))


def test_measure_cycles_through_sets():
    seen: list[int] = []
    t = _measure.measure([lambda: seen.append(0), lambda: seen.append(1)], TINY)
    assert len(t.times_s) == 3 and set(seen) == {0, 1}


def test_tune_alternates_the_variants_on_the_same_buffers(monkeypatch):
    """Each round times all three variants (the order rotated from round to round), each
    on the buffer sets given; a variant's rounds are its own calls' timings."""
    log: list[tuple[str, int]] = []
    cost = {"two_pass": 2e-4, "three_pass_reload": 4e-4, "auto": 3e-4}

    def fake_calls(op, algorithm, isa, threads, sets):
        def call(i):
            log.append((algorithm, i))
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < cost[algorithm]:
                pass

        return [lambda i=i: call(i) for i in range(len(sets))]

    monkeypatch.setattr(_measure, "twopass_calls", fake_calls)
    sets = _measure.Buffers((8,)).get(3)
    per_round = _tune.time_variants("softmax", BEST, 1, sets, TINY, rounds=3, max_rounds=3)
    assert set(per_round) == {"two_pass", "three_pass_reload", "auto"}
    assert all(len(v) == 3 for v in per_round.values())
    for a, c in cost.items():
        assert all(c <= t < 20 * c for t in per_round[a]), (a, per_round[a])
    firsts = [a for k, (a, _) in enumerate(log) if k == 0 or log[k - 1][0] != a]  # runs of one variant
    assert firsts == [
        *("two_pass", "three_pass_reload", "auto"),
        *("three_pass_reload", "auto", "two_pass"),
        *("auto", "two_pass", "three_pass_reload"),
    ]
    assert {i for _, i in log} == {0, 1, 2}  # every set used


def test_tune_reports_every_cell_hot_and_cold(tmp_path):
    tuning = os.path.join(os.path.dirname(twopass.__file__), "_tuning.json")
    before = open(tuning, "rb").read() if os.path.exists(tuning) else None
    argv = ["--tune", "--sizes", "1K,2x1K", "--threads", "1", "--repeats", "3", "--out", str(tmp_path)]
    assert _cli.main(argv) == 0
    (path,) = tmp_path.glob("tune-*.json")
    d = json.loads(path.read_text())
    assert {"machine", "date", "command", "summary", "results"} <= set(d)
    assert d["command"] == "python -m twopass bench " + " ".join(argv)
    l3 = d["machine"]["caches"]["L3"]
    shapes = [(1024,), (2, 1024)]
    cells = {(c["dtype"], c["op"], c["threads"], c["regime"], tuple(c["shape"])): c for c in d["results"]}
    want = {
        (dt, op, 1, regime, shape)
        for dt in ("float32", "float64")
        for op in ("softmax", "log_softmax")
        for regime in ("hot", "cold")
        for shape in shapes
    }
    assert set(cells) == want and len(d["results"]) == len(want)
    for (dt, _op, _, regime, shape), c in cells.items():
        ws = 2 * math.prod(shape) * np.dtype(dt).itemsize
        assert c["working_set_bytes"] == ws
        if regime == "hot":
            assert c["nsets"] == 1
        else:
            assert c["nsets"] >= math.ceil(2 * l3 / ws) and c["nsets"] * ws >= 2 * l3
        med = c["median_s"]
        assert set(med) == {"two_pass", "three_pass_reload", "auto"}
        assert all(_finite_positive(v) for v in med.values()), c
        nr = len(c["rounds_s"]["auto"])
        assert d["config"]["rounds"] == _tune.FULL_ROUNDS  # no --quick
        assert _tune.FULL_ROUNDS <= nr <= _tune.MAX_ROUNDS
        assert all(len(v) == nr and all(_finite_positive(t) for t in v) for v in c["rounds_s"].values())
        assert c["spread"] == pytest.approx(_tune.spread(c["rounds_s"]))
        if c["first_auto_over_best"] > _tune.LIMIT and not c["same_as_hot"]:  # measured again, in full
            assert nr == _tune.MAX_ROUNDS
        else:
            assert c["first_auto_over_best"] == pytest.approx(c["auto_over_best"])
            if nr > _tune.FULL_ROUNDS:  # an extra round only when the rounds before it disagreed
                assert _tune.spread({a: v[: nr - 1] for a, v in c["rounds_s"].items()}) > _tune.SPREAD
            if nr < _tune.MAX_ROUNDS:  # and stopped early only once they agreed
                assert c["spread"] <= _tune.SPREAD
        assert c["auto_over_best"] == pytest.approx(med["auto"] / min(med["two_pass"], med["three_pass_reload"]))
        assert c["auto_choice"] in ("two_pass", "three_pass_reload", "either"), c
        assert c["faster"] == min(("two_pass", "three_pass_reload"), key=med.get)
    s = d["summary"]
    assert s["cells"] == len(want) and s["worst"] == max(c["auto_over_best"] for c in d["results"])
    rechecked = [c for c in d["results"] if c["first_auto_over_best"] > _tune.LIMIT and not c["same_as_hot"]]
    assert s["rechecked"] == len(rechecked)
    after = open(tuning, "rb").read() if os.path.exists(tuning) else None
    assert after == before  # nothing written into the package
    assert _cli.main(["--plot-only", str(path)]) == 0  # its tables again


def test_tune_takes_the_halves_on_request(tmp_path):
    """--dtypes bfloat16,float16: the halves' cells, their working sets at 2 bytes, and
    auto's choice found among the two algorithms' outputs."""
    argv = ["--tune", "--sizes", "8K", "--dtypes", "bfloat16,float16", "--threads", "1", "--ops", "softmax"]
    assert _cli.main([*argv, "--repeats", "3", "--quick", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("tune-*.json")
    cells = json.loads(path.read_text())["results"]
    assert sorted((c["dtype"], c["regime"]) for c in cells) == [
        ("bfloat16", "cold"),
        ("bfloat16", "hot"),
        ("float16", "cold"),
        ("float16", "hot"),
    ]
    for c in cells:
        assert c["working_set_bytes"] == 2 * 8192 * 2
        assert c["auto_choice"] in ("two_pass", "three_pass_reload", "either"), c


def test_tune_rejects_what_it_does_not_measure(tmp_path):
    for bad in (["--dtypes", "int8"], ["--ops", "logsumexp"], ["--threads", "0"], ["--sizes", "1x2x3"]):
        assert _cli.main(["--tune", "--sizes", "1K", "--out", str(tmp_path), *bad]) == 2, bad
    assert not list(tmp_path.glob("tune-*.json"))


def test_kernel_call_matches_public_path():
    b = _measure.Buffers((3, 100))
    sets = b.get(1)
    calls = _measure.kernel_calls("softmax", "two_pass", BEST, 1, sets)
    assert calls is not None, "a C-contiguous 2-D input: the bare kernel call applies"
    sets[0].y[:] = 0
    calls[0]()
    np.testing.assert_array_equal(sets[0].y, twopass.softmax(sets[0].x, algorithm="two_pass"))


def test_kernel_call_does_not_apply_to_strided_rows():
    x = np.zeros((4, 8), dtype=np.float32)[:, ::2]
    s = _measure.BufferSet(x, np.zeros_like(x), np.zeros(4, dtype=np.float32))
    assert _measure.kernel_calls("softmax", "two_pass", BEST, 1, [s]) is None


def test_kernel_call_mismatch_raises(monkeypatch):
    """A bare call that computes something else than the public path stops the benchmark."""
    real = _measure.compute
    monkeypatch.setattr(_measure, "compute", lambda *a, **k: real(*a, **k) + 1)
    with pytest.raises(_measure.KernelMismatch, match="differs from the public path"):
        _measure.kernel_calls("softmax", "two_pass", BEST, 1, _measure.Buffers((3, 100)).get(1))


def test_kernel_call_errors_propagate(monkeypatch):
    from twopass import _core

    def broken(*args):
        raise TypeError("run(): incompatible function arguments")

    monkeypatch.setattr(_core, "run", broken)
    with pytest.raises(TypeError, match="incompatible"):
        _measure.kernel_calls("logsumexp", "two_pass", BEST, 1, _measure.Buffers((3, 100)).get(1))


def test_probe_calls_reject_unknown_probes():
    with pytest.raises(ValueError, match="unknown probe"):
        _measure.probe_calls("copy_magic", _measure.Buffers((8,)).get(1), 1, BEST)


def test_prefetch_summary_picks_the_distance_fastest_over_all_cells():
    cells = [
        {"median_s": {"2048": 2.0, "8192": 1.0}},  # (JSON keys come back as strings)
        {"median_s": {"2048": 1.0, "8192": 1.2}},
    ]
    cells = [{"median_s": {int(k): v for k, v in c["median_s"].items()}} for c in cells]
    s = _tune.prefetch_summary(cells, current=2048)
    assert s["over_fastest"][2048] == pytest.approx(math.sqrt(2.0 * 1.0))
    assert s["over_fastest"][8192] == pytest.approx(math.sqrt(1.0 * 1.2))
    assert s["best"] == 8192 and s["current_over_best"] == pytest.approx(math.sqrt(2.0) / math.sqrt(1.2))
    assert _tune.prefetch_summary([], 2048) == {}


def test_prefetch_cells_time_every_distance_and_restore_the_one_in_use(tmp_path):
    from rich.console import Console

    from twopass import _core

    before = _core.prefetch_bytes()
    caches = {"L1d": 1 << 10, "L2": 4 << 10, "L3": 24 << 10}
    cells = _tune.prefetch_cells(
        BEST, [1], TINY, caches, lambda what: None, rounds=2, shapes=[(2, 1024)], distances=(0, 4096)
    )
    assert _core.prefetch_bytes() == before
    assert [(c["op"], c["shape"], c["threads"]) for c in cells] == [(op, [2, 1024], 1) for op in _tune.PREFETCH_OPS]
    assert all(
        set(c["median_s"]) == {0, 4096} and all(_finite_positive(v) for v in c["median_s"].values()) for c in cells
    )
    doc = _tune.document([], isa=BEST, argv=[], shapes=[], dtypes=[], ops=[], threads=[1], budget=TINY, prefetch=cells)
    console = Console(file=io.StringIO(), width=160)
    _tune.print_report(console, doc)
    text = console.file.getvalue()
    assert "software-prefetch distance" in text and "prefetch distance: best" in text


def test_entry_points_run_on_the_case_threads():
    """twopass.torch follows torch.get_num_threads(), the NumPy entry twopass's default:
    the entry points are timed with both set to the case's count, whatever the case
    before left, and both restored after (the bench once timed twopass.torch on the
    previous case's count)."""
    torch = pytest.importorskip("torch")
    from twopass import _dispatch

    before, default = torch.get_num_threads(), _dispatch.default_threads()
    for threads in (1, 2, 1):
        with _run._default_threads(threads):
            assert torch.get_num_threads() == threads
            assert _dispatch.default_threads() == threads
        assert torch.get_num_threads() == before
        assert _dispatch.default_threads() == default
