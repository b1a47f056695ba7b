"""The benchmark's machinery on tiny sizes: schema, traffic, regimes, bounds, plots, tuning.

Fast (seconds): tiny shapes, 2-3 repeats. Peers that are not installed are skipped by
the benchmark itself (and the checks below only look at the ones that ran).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("rich")

import twopass  # noqa: E402
from twopass import _api  # noqa: E402
from twopass.bench import _analysis, _cli, _measure, _plan, _run, _tune  # noqa: E402

BEST = twopass.info()["isa_supported"][-1]


def _finite_positive(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# ----------------------------------------------------------------------------------
# Pure parts: sizes, traffic, regimes, crossover.
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
    assert _plan.traffic("softmax", "three_pass_reload", (1 << 24,), f4, "DRAM", CACHES, 1)[:2] == (3, 2)
    assert _plan.traffic("softmax", "three_pass_reload", (4096,), f4, "L1d", CACHES, 1)[:2] == (3, 2)


def test_crossover():
    assert _tune.crossover({256: 1.2, 1024: 1.1, 4096: 0.9, 16384: 0.8}) == 4096
    assert _tune.crossover({256: 0.9, 1024: 0.95}) == 0  # two_pass everywhere
    assert _tune.crossover({256: 0.9, 1024: 1.05}) == _tune.NEVER  # loses at the longest
    assert _tune.crossover({256: 0.9, 1024: 1.1, 4096: 0.9}) == 0  # one length off: noise, smoothed away
    # two lengths in a row where two_pass loses are not noise: from after them on
    assert _tune.crossover({256: 0.9, 1024: 1.1, 4096: 1.1, 16384: 0.9, 65536: 0.8}) == 16384


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
    assert _cli.main(argv) == 0
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
        want = "two_pass" if op == "logsumexp" else _api._auto_algorithm(op, f32, n, size, threads, BEST)
        assert _analysis.auto_record(members, BEST)["algorithm"] == want, (shape, threads)


def test_peers_checked_against_twopass(doc):
    for r in doc["results"]:
        if r["kind"] == "peer":
            assert r["check"]["ok"], r
            assert isinstance(r["allocates"], bool)


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
    cases = {s: _plan.plan_shape(cfg, s, caches, 4, _measure.PROBES, {}) for s in cfg.shapes}
    runner = _run.Runner(cfg, TINY, caches, {}, api_overhead_s=0.0, probe_isa=BEST)
    runner.run(cases, lambda what: None)
    bounds = _analysis.annotate(runner.records, caches)
    assert {k[2] for k in bounds} == {"DRAM", "L3"}
    res = _analysis.results(runner.records)
    soft = [r for r in res if r["op"] == "softmax"]
    assert all(r["level"] == "DRAM" and r["nsets"] == 2 for r in soft)
    assert soft[0]["traffic"]["basis"] == "row in cache"
    assert (soft[0]["traffic"]["reads"], soft[0]["traffic"]["writes"]) == (1, 1)
    assert all(r["level"] == "L3" and r["nsets"] == 1 for r in res if r["op"] == "logsumexp")
    assert all(_finite_positive(r["frac_bound"]) for r in res)


def test_measure_cycles_through_sets():
    seen: list[int] = []
    t = _measure.measure([lambda: seen.append(0), lambda: seen.append(1)], TINY)
    assert len(t.times_s) == 3 and set(seen) == {0, 1}


def test_tune_writes_crossovers(tmp_path):
    out = tmp_path / "tuning.json"
    assert _cli.main(["--tune", "--sizes", "256,1K", "--tune-out", str(out)]) == 0
    d = json.loads(out.read_text())
    for dtype in ("float32", "float64"):
        for op in ("softmax", "log_softmax"):
            assert isinstance(d[dtype][op], int) and d[dtype][op] >= 0
            assert all(_finite_positive(v) for v in d["ratios"][dtype][op].values())
    assert {"machine", "date", "command"} <= set(d)


def test_kernel_call_matches_public_path():
    b = _measure.Buffers((3, 100))
    sets = b.get(1)
    calls = _measure.kernel_calls("softmax", "two_pass", BEST, 1, sets)
    if calls is None:
        pytest.skip("twopass._core.run's arguments changed: the bench falls back to the public path")
    calls[0]()
    np.testing.assert_array_equal(sets[0].y, twopass.softmax(sets[0].x, algorithm="two_pass"))
