"""`python -m twopass bench`'s modes besides the CPU sweep: the one argument parser (which
options each mode takes), --device cuda (without a device: a clear error; under
TRITON_INTERPRET=1: a tiny run of the whole path), --cross-entropy, --distributed, and
--plot-only reading every mode's JSON back.

Each run is tiny (a few seconds); the CUDA path runs in a subprocess, because
TRITON_INTERPRET must be set before triton decorates the kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rich")

import twopass  # noqa: E402
from twopass.bench import _cli  # noqa: E402

# The subprocesses import the twopass this process imported (installed or in-tree).
PACKAGE_PARENT = str(Path(twopass.__file__).resolve().parents[1])


def _bench(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """python -m twopass bench ARGS in a fresh process (this checkout's sources first)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "twopass", "bench", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def _one_json(out: Path, stem: str) -> dict:
    (path,) = out.glob(f"{stem}-*.json")
    d = json.loads(path.read_text())
    d["_path"] = str(path)
    return d


# ----------------------------------------------------------------------------------
# The argument parser: one mode at a time, and only that mode's options.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, mode",
    [
        ([], "the CPU sweep"),
        (["--quick", "--sizes", "1K"], "the CPU sweep"),
        (["--tune"], "--tune"),
        (["--cross-entropy"], "--cross-entropy"),
        (["--cross-entropy", "--device", "cpu"], "--cross-entropy"),
        (["--device", "cuda"], "--device cuda"),
        (["--device", "cuda", "--cross-entropy"], "--cross-entropy --device cuda"),
        (["--distributed"], "--distributed"),
        (["--distributed", "--device", "cuda"], "--distributed"),
        (["--linear-cross-entropy", "--threads", "1,2", "--sizes", "64x16x100"], "--linear-cross-entropy"),
        (["--plot-only", "x.json"], "--plot-only"),
    ],
)
def test_mode_of(argv, mode):
    args = _cli.parser().parse_args(argv)
    assert _cli.mode_of(args) == mode
    _cli.check_options(args, mode)  # a mode's own options are accepted


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--worlds", "2"], "--worlds"),  # a --distributed option on the sweep
        (["--tune", "--cross-entropy"], "--cross-entropy"),  # two modes
        (["--tune", "--device", "cuda"], "--device cuda"),  # --tune measures the CPU kernels
        (["--device", "cuda", "--threads", "2"], "--threads"),
        (["--device", "cuda", "--variants"], "--variants"),  # a cross-entropy option
        (["--cross-entropy", "--isa", "avx2"], "--isa"),
        (["--distributed", "--dtypes", "bfloat16"], "--dtypes"),
        (["--algorithms", "two_pass", "--tune"], "--algorithms"),  # a sweep option on --tune
    ],
)
def test_options_of_another_mode_are_errors(argv, flag, tmp_path, capsys):
    args = _cli.parser().parse_args(argv)
    with pytest.raises(ValueError, match=flag):
        _cli.check_options(args, _cli.mode_of(args))
    assert _cli.main([*argv, "--out", str(tmp_path)]) == 2
    assert "not an option of" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_bad_values_are_errors(tmp_path, capsys):
    for argv in (
        ["--distributed", "--worlds", "1"],
        ["--distributed", "--worlds", "two"],
        ["--distributed", "--sizes", "4K"],  # a row, not ROWSxCLASSES
        ["--cross-entropy", "--dtypes", "float16"],
        ["--dtypes", "int8", "--sizes", "1K"],  # the sweep: not a dtype it measures
        ["--dtypes", "", "--sizes", "1K"],
    ):
        assert _cli.main([*argv, "--out", str(tmp_path)]) == 2, argv
        assert "error:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _cli.parser().parse_args(["--device", "tpu"])


def test_cuda_without_a_device_is_a_clear_error(monkeypatch, capsys):
    """No traceback: a message, and exit status 2 (no CUDA here, no interpreter asked for)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = _bench(["--device", "cuda"], {"TRITON_INTERPRET": "0"})  # the command line itself
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr + r.stdout
    assert "no CUDA device" in r.stdout
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _cli.main(["--device", "cuda", "--cross-entropy", "--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().out
    assert _cli.main(["--distributed", "--device", "cuda", "--worlds", "2"]) == 2
    assert "need 2 CUDA devices" in capsys.readouterr().out


# ----------------------------------------------------------------------------------
# Tiny runs of each mode, and --plot-only on their JSON.
# ----------------------------------------------------------------------------------
def test_cuda_path_under_the_interpreter(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    env = {"TRITON_INTERPRET": "1"}
    out = tmp_path / "sm"
    r = _bench(["--device", "cuda", "--sizes", "2x300", "--ops", "softmax,logsumexp", "--dtypes", "float32",
                "--out", str(out)], env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    d = _one_json(out, "bench-cuda")
    assert d["schema"] == "twopass-bench-cuda/1" and d["machine"]["interpret"] is True
    assert [(x["shape"], x["op"], x["dtype"]) for x in d["results"]] == [
        ("2x300", "softmax", "float32"),
        ("2x300", "logsumexp", "float32"),
    ]
    assert all(x["ok"] and x["twopass_ms"] > 0 and x["kernel"] for x in d["results"])
    assert _cli.main(["--plot-only", d["_path"]]) == 0
    out = tmp_path / "ce"
    r = _bench(["--device", "cuda", "--cross-entropy", "--sizes", "3x200", "--dtypes", "float32",
                "--out", str(out)], env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    d = _one_json(out, "bench-ce-cuda")
    assert {x["method"] for x in d["results"]} == {"twopass", "twopass-inplace", "torch"}
    assert all(x["ok"] for x in d["results"])
    tp = next(x for x in d["results"] if x["method"] == "twopass")
    assert tp["deterministic"] is True and tp["cuda_graph"] is None  # no graphs in the interpreter
    assert _cli.main(["--plot-only", d["_path"]]) == 0


def test_distributed_on_two_gloo_processes(tmp_path, capsys):
    pytest.importorskip("torch")
    argv = ["--distributed", "--worlds", "2", "--sizes", "16x300", "--repeats", "1", "--out", str(tmp_path)]
    assert _cli.main(argv) == 0
    d = _one_json(tmp_path, "bench-distributed")
    assert d["backend"] == "gloo" and d["command"] == "python -m twopass bench " + " ".join(argv)
    rows = {(r["op"], r["method"]): r for r in d["results"]}
    assert set(rows) == {(op, m) for op in ("cross_entropy", "logsumexp") for m in ("twopass", "two all-reduces")}
    assert rows["cross_entropy", "twopass"]["collectives_fwd"] == 1  # one all-gather
    assert rows["cross_entropy", "two all-reduces"]["collectives_fwd"] == 2
    assert all(r["world"] == 2 and r["fwd_ms"] > 0 and r["comm_ms"] > 0 for r in d["results"])
    capsys.readouterr()
    assert _cli.main(["--plot-only", d["_path"]]) == 0
    assert "twopass speed-up" in capsys.readouterr().out


def test_cross_entropy_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    argv = ["--cross-entropy", "--sizes", "8x300", "--dtypes", "float32", "--threads", "1", "--repeats", "1",
            "--no-torch-compile", "--out", str(tmp_path)]  # fmt: skip
    assert _cli.main(argv) == 0
    d = _one_json(tmp_path, "bench-ce")
    (row,) = d["results"]
    v = row["variants"]
    assert set(v) == {"twopass", "twopass_inplace", "torch", "liger"}  # torch_compile left out
    assert v["liger"] is None and any("liger" in n for n in d["notes"])  # said why, not hidden
    for k in ("twopass", "twopass_inplace", "torch"):
        assert v[k]["median_s"] > 0
        # peak memory measured, or the note says why not
        assert v[k]["peak_extra_bytes"] is not None or any(k in n for n in d["notes"])
    assert _cli.main(["--plot-only", d["_path"]]) == 0


def test_linear_cross_entropy_on_the_cpu(tmp_path):
    """--linear-cross-entropy: every CPU variant timed and its peak memory measured in its
    own process (torch.compile left out here), the ratio to torch's chunked form printed."""
    pytest.importorskip("torch")
    argv = ["--linear-cross-entropy", "--sizes", "64x16x300", "--dtypes", "float32", "--threads", "1",
            "--repeats", "1", "--no-torch-compile", "--out", str(tmp_path)]  # fmt: skip
    assert _cli.main(argv) == 0
    d = _one_json(tmp_path, "bench-lce")
    (row,) = d["results"]
    v = row["variants"]
    assert set(v) == {"twopass", "torch", "torch_chunked"}
    for k in v:
        assert v[k]["median_s"] >= v[k]["min_s"] > 0 and v[k]["peak_extra_bytes"] >= 0
    assert _cli.main(["--plot-only", d["_path"]]) == 0
    with pytest.raises(ValueError, match="NxHxV"):
        _cli._linear_cross_entropy(None, _cli.parser().parse_args(["--linear-cross-entropy", "--sizes", "64x16"]), [])


def test_plot_only_rejects_what_is_not_a_results_file(tmp_path, capsys):
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    assert _cli.main(["--plot-only", str(p)]) == 2
    assert "not a results file" in capsys.readouterr().out
