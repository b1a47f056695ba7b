"""python -m twopass verify: the bars it evaluates from the GPU benchmark's results (checked
here on hand-made result documents: the GPU run itself needs a GPU, and CI runs the command's
interpreter version in .ci/run)."""

from __future__ import annotations

from twopass import verify


def cuda_doc(rows):
    return {"schema": "twopass-bench-cuda/1", "read_GBps": 4000.0, "results": rows}


def row(op, dims, frac, ms=1.0, torch_ms=2.0, dim=-1):
    nbytes = frac * 3000.0 * ms * 1e6  # bytes at `frac` of a 3000 GB/s copy
    return {"shape": "x".join(map(str, dims)), "dims": dims, "dim": dim, "dtype": "bfloat16", "op": op,
            "bytes": nbytes, "twopass_ms": ms, "torch_ms": torch_ms, "twopass_frac": frac}  # fmt: skip


def by_bar(result):
    return {(b["case"], b["bar"]): b["met"] for b in result}


def test_softmax_bars_by_row_length():
    short, long = [256, 262144], [4, 1 << 24]
    got = by_bar(verify.bars([cuda_doc([row("softmax", short, 0.89), row("softmax", long, 0.86)])]))
    assert got[("256x262144 bfloat16 softmax", ">= 90% of the floor")] is False  # rows up to 256K: 90%
    assert got[("4x16777216 bfloat16 softmax", ">= 85% of the floor")] is True  # beyond: 85%


def test_logsumexp_is_measured_against_one_read():
    # 3600 GB/s over a 4000 GB/s read: 90% (its frac against the copy bandwidth is ignored)
    r = row("logsumexp", [64, 1 << 20], 0.5)
    r["bytes"] = 3600.0 * 1e6
    got = by_bar(verify.bars([cuda_doc([r])]))
    assert got[("64x1048576 bfloat16 logsumexp", ">= 90% of one read")] is True
    r["bytes"] = 3500.0 * 1e6
    assert by_bar(verify.bars([cuda_doc([r])]))[("64x1048576 bfloat16 logsumexp", ">= 90% of one read")] is False


def test_backward_and_torch_bars():
    got = by_bar(verify.bars([cuda_doc([row("softmax_bwd", [16384, 1024], 0.84, ms=2.0, torch_ms=1.9)])]))
    assert got[("16384x1024 bfloat16 softmax_bwd", ">= 85% of the floor")] is False
    assert got[("16384x1024 bfloat16 softmax_bwd", "not slower than torch")] is False


def test_cross_entropy_bars():
    res = [
        {"shape": [8192, 128256], "dtype": "bfloat16", "options": "plain", "method": "twopass", "ms": 1.0,
         "frac_bound": 0.82},
        {"shape": [8192, 128256], "dtype": "bfloat16", "options": "plain", "method": "liger", "ms": 1.2,
         "frac_bound": 0.7},
    ]  # fmt: skip
    got = by_bar(verify.bars([{"schema": "twopass-bench-ce-cuda/1", "results": res}]))
    assert got[("CE 8192x128256 bfloat16", ">= 80% of one read + one write")] is True
    assert got[("CE 8192x128256 bfloat16", ">= 1.3x faster than Liger")] is False  # 1.2x


def test_markdown_marks_failures_and_skips():
    doc = {"device": "d", "date": "t", "interpret": False, "notes": [],
           "checks": [{"check": "stress", "ok": False, "detail": "x", "seconds": 1},
                      {"check": "large", "ok": None, "detail": "y", "seconds": 0}],
           "bars": [{"case": "c", "bar": ">= 90% of the floor", "value": 0.5, "met": False}]}  # fmt: skip
    md = verify._markdown(doc)
    assert "| stress | **FAIL** |" in md and "| large | skipped |" in md
    assert "| c | >= 90% of the floor | 50% | **no** |" in md and "0 of 1 bars met." in md
