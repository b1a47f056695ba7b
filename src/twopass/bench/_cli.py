"""The one command line of every bench mode: parse, check the options against the mode, run, report, save."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from . import _analysis, _measure, _peers, _plan, _report

USAGE = """python -m twopass bench [mode] [options]

modes (one at a time):
  (none)                 the CPU sweep: softmax, log_softmax and logsumexp, rows 1K..64M and
                         batches, float32, bfloat16 and float16, every algorithm, ISA and thread
                         count, the entry points (plain call, out=, twopass.torch), against the
                         installed peers and the memory-bandwidth bound measured on the same buffers
  --tune                 the CPU: does algorithm="auto" lose anywhere, hot or cold? and which
                         software-prefetch distance suits this machine
  --cross-entropy        the fused cross-entropy, forward + backward, against torch (and
                         Liger-Kernel on CUDA); on the CPU, or with --device cuda on the GPU
  --linear-cross-entropy the vocabulary head fused with its loss (N x H x V), forward + backward:
                         time and peak memory against torch unfused, chunked and compiled (and
                         Liger-Kernel, Cut Cross-Entropy with --device cuda)
  --device cuda          the Triton kernels: softmax, log_softmax, logsumexp (and backward)
                         against torch, in GB/s and %% of the HBM floor (measured copy bandwidth)
  --distributed          vocabulary-parallel cross_entropy and logsumexp (twopass.torch.distributed)
                         against two all-reduces: gloo processes on the CPU, nccl with --device cuda
  --plot-only JSON       a saved run's tables again (any mode), and the sweep's plots

--quick: a short version of any mode (the sweep: a few minutes)."""

# The options each mode reads (argparse dests); any other option given is an error, not
# silently ignored. "device" is checked apart (cpu or cuda per mode).
_COMMON = {"quick", "out", "device"}
MODE_OPTIONS: dict[str, set[str]] = {
    "the CPU sweep": _COMMON
    | {"threads", "isa", "ops", "dtypes", "algorithms", "sizes", "peers", "repeats", "no_plots", "no_peers"},
    "--tune": _COMMON | {"tune", "threads", "isa", "ops", "dtypes", "sizes", "repeats", "tune_out"},
    "--cross-entropy": _COMMON | {"cross_entropy", "threads", "dtypes", "sizes", "repeats", "no_torch_compile"},
    "--device cuda": _COMMON | {"ops", "dtypes", "sizes", "sweep", "compile", "compile_dir"},
    "--cross-entropy --device cuda": _COMMON
    | {"cross_entropy", "dtypes", "sizes", "variants", "sweep", "compile", "compile_dir", "no_torch_compile"},
    "--distributed": _COMMON | {"distributed", "worlds", "sizes", "repeats"},
    "--linear-cross-entropy": _COMMON
    | {"linear_cross_entropy", "threads", "dtypes", "sizes", "repeats", "no_torch_compile"},
    "--plot-only": {"plot_only", "out", "no_plots"},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twopass bench", usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    modes = p.add_argument_group("modes")
    modes.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (default): the C++ kernels; cuda: the Triton kernels (needs a CUDA device; TRITON_INTERPRET=1 "
        "runs the path on tiny CPU tensors, timings meaningless)",
    )
    modes.add_argument(
        "--tune",
        action="store_true",
        help="only that: does algorithm='auto' lose? softmax and log_softmax, float32 and float64, rows 1K..64M "
        "and the batches, hot (same buffers) and cold (buffers cycled over > 2x L3): two_pass, three_pass_reload "
        "and auto, alternating, and auto / the faster of the two per cell (--quick: 8 shapes, ~3 minutes; "
        "full: ~15-20 minutes); then two_pass at 2-32 KiB prefetch distances (TWOPASS_PREFETCH_BYTES), cold",
    )
    modes.add_argument(
        "--cross-entropy",
        action="store_true",
        help="the fused cross-entropy (forward + backward) against torch eager and compiled, with memory",
    )
    modes.add_argument(
        "--linear-cross-entropy",
        action="store_true",
        help="linear + cross-entropy (forward + backward): twopass.torch.linear_cross_entropy against torch "
        "unfused, torch's chunked form and torch.compile (and on CUDA Liger-Kernel and Cut Cross-Entropy): "
        "time and peak memory, one fresh process per variant",
    )
    modes.add_argument(
        "--distributed",
        action="store_true",
        help="vocabulary-parallel cross_entropy and logsumexp over torch.distributed, twopass (one all-gather) "
        "against a Megatron-style baseline (two all-reduces)",
    )
    modes.add_argument("--plot-only", metavar="JSON", help="print a saved run's tables, redraw the sweep's plots")
    p.add_argument("--quick", action="store_true", help="a short version of the mode")
    p.add_argument("--threads", help="CPU thread counts, e.g. 1,2 (default: 1 and all cores)")
    p.add_argument(
        "--isa", help="ISAs, e.g. scalar,avx2 (default: all this CPU runs; --quick: the best; --tune: one, the best)"
    )
    p.add_argument(
        "--ops",
        help=f"ops (sweep default: {','.join(_plan.OPS)}; --tune: softmax,log_softmax; "
        "--device cuda: also softmax_bwd, log_softmax_bwd, logsumexp_bwd)",
    )
    p.add_argument(
        "--dtypes",
        help="dtypes (the sweep: float32,bfloat16,float16, --quick float32,bfloat16, float64 on request; --tune: "
        "float32,float64, the halves on request; --cross-entropy and --device cuda: float32,bfloat16)",
    )
    p.add_argument("--algorithms", help=f"twopass algorithms (default: {','.join(_plan.ALGORITHMS)})")
    p.add_argument(
        "--sizes",
        help="rows N (e.g. 4K,16M) and batches RxN (e.g. 4096x4096); --cross-entropy and --distributed: "
        "ROWSxCLASSES, --linear-cross-entropy NxHxV (default: each mode's shapes)",
    )
    p.add_argument(
        "--peers", help=f"peers to run (default: every installed one of {','.join(p.name for p in _peers.PEERS)})"
    )
    p.add_argument("--repeats", type=int, help="exactly this many timed repeats (default: by size, at least 5)")
    p.add_argument("--out", default="bench_results", help="directory for the JSON and PNGs (default: bench_results)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG")
    p.add_argument("--no-peers", action="store_true", help="twopass only")
    p.add_argument("--tune-out", help="the JSON file --tune writes (default: OUT/tune-DATE.json)")
    p.add_argument("--no-torch-compile", action="store_true", help="--cross-entropy: leave torch.compile out")
    p.add_argument(
        "--variants",
        action="store_true",
        help="--cross-entropy --device cuda: also label smoothing, z-loss, soft-cap, class weights and ignored "
        "rows, on the middle shape",
    )
    p.add_argument("--sweep", action="store_true", help="--device cuda: also time other Triton launcher settings")
    p.add_argument(
        "--compile",
        action="store_true",
        help="--device cuda, no GPU needed: build every kernel variant the benchmark would launch for sm_90 "
        "offline; registers, spills, shared memory, 16-byte accesses, ex2 count",
    )
    p.add_argument("--compile-dir", default="/tmp/twopass_cubins", help="--compile: where the cubins go")
    p.add_argument("--worlds", help="--distributed: rank counts (default 2,4; --quick: 2)")
    return p


def mode_of(args: argparse.Namespace) -> str:
    """Which mode the options select (a key of MODE_OPTIONS)."""
    if args.plot_only:
        return "--plot-only"
    if args.tune:
        return "--tune"
    if args.distributed:
        return "--distributed"
    if args.linear_cross_entropy:
        return "--linear-cross-entropy"
    if args.cross_entropy:
        return "--cross-entropy --device cuda" if args.device == "cuda" else "--cross-entropy"
    return "--device cuda" if args.device == "cuda" else "the CPU sweep"


def check_options(args: argparse.Namespace, mode: str) -> None:
    """ValueError for an option the mode does not read (given: not at its default)."""
    defaults = vars(parser().parse_args([]))
    given = [k for k, v in vars(args).items() if v != defaults[k]]
    stray = [k for k in given if k not in MODE_OPTIONS[mode]]
    if args.device == "cuda" and mode in ("the CPU sweep", "--tune", "--plot-only"):
        stray = [*stray, "device"]  # (the sweep with --device cuda is the cuda mode: this is --tune)
    if stray:
        flags = ", ".join("--" + k.replace("_", "-") + (" cuda" if k == "device" else "") for k in stray)
        raise ValueError(f"{flags}: not an option of {mode} (python -m twopass bench --help)")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


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
    dtypes = _choose(
        _split(args.dtypes), _plan.QUICK_DTYPES if args.quick else _plan.DEFAULT_DTYPES, _plan.DTYPES, "--dtypes"
    )
    peer_names = _split(args.peers)
    torch_peer = not args.no_peers and (peer_names is None or "torch" in peer_names)
    # twopass.jax is timed where jax.nn is: with the jax peer, when jax is installed
    jax_peer = not args.no_peers and (peer_names is None or "jax" in peer_names) and _installed("jax")
    entries = [e for e in _plan.ENTRIES if (e != "torch plain" or torch_peer) and (e != "twopass.jax" or jax_peer)]
    cfg = _plan.Config(
        shapes=shapes,
        ops=ops,
        algorithms=algos,
        isas=isas,
        threads=threads,
        peers=not args.no_peers,
        repeats=args.repeats,
        quick=args.quick,
        dtypes=dtypes,
        entries=entries,
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
        mode = mode_of(args)
        check_options(args, mode)
        if mode == "--plot-only":
            return _plot_only(console, Path(args.plot_only), args)
        if mode == "--tune":
            return _tune(console, args, argv)
        if mode == "--cross-entropy":
            return _cross_entropy_cpu(console, args, argv)
        if mode in ("--device cuda", "--cross-entropy --device cuda"):
            return _cuda_mode(console, args, argv, cross_entropy=args.cross_entropy)
        if mode == "--distributed":
            return _distributed(console, args, argv)
        if mode == "--linear-cross-entropy":
            return _linear_cross_entropy(console, args, argv)
        cfg, budget = resolve(args)
    except ImportError as e:  # torch or triton missing: a precondition, said plainly
        console.print(f"[red]error:[/red] {mode_of(args)} needs a package that is not installed: {e}")
        return 2
    except (ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    doc = run(cfg, budget, console, argv, peer_names=_split(args.peers))
    out = Path(args.out)
    path = _report.save(doc, out, "bench")
    _report.print_report(console, doc)
    console.print(f"JSON: {path}")
    if not args.no_plots:
        from . import _plots

        stem = path.stem
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
    load_before = _report.load_warning(console)
    info = twopass.info()
    caches = info["caches"]
    peers, notes = _peers.available(peer_names) if cfg.peers else ([], [])
    peer_modes = {p.name: p.threading for p in peers}
    cases = {
        (s, d): _plan.plan_shape(cfg, s, caches, d, _measure.PROBES, peer_modes) for d in cfg.dtypes for s in cfg.shapes
    }
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
    with _report.progress(console, total, width=48) as advance:
        runner.run(cases, advance)
    bs = _analysis.annotate(runner.records, caches)
    return {
        **_report.header("twopass-bench/1", argv, info),
        "dtype": cfg.dtypes[0],  # the plots' (the first given)
        "dtypes": cfg.dtypes,
        "versions": _peers.versions() | {"twopass": info["versions"]["twopass"]},
        "config": {
            "shapes": [list(s) for s in cfg.shapes],
            "ops": cfg.ops,
            "algorithms": cfg.algorithms,
            "isas": cfg.isas,
            "threads": cfg.threads,
            "dtypes": cfg.dtypes,
            "entries": cfg.entries,
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
            "entries": "kind 'entry', algorithm 'auto': twopass plain = twopass.<op>(x) (a fresh output per call); "
            "twopass out=fresh = out=np.empty(...) per call; twopass.torch = twopass.torch.<op>(tensor, -1); "
            "torch plain = torch.<op>(tensor, -1) without out= (the 'torch' peer passes out=); twopass.jax = "
            "jax.jit(twopass.jax.<op>)(array, axis=-1) (the 'jax' peer: jax.nn.<op> under jit). The kind "
            "'twopass' records pass out= a reused buffer",
        },
        "bounds": _report.bounds_table(runner.records, bs),
        "results": runner.records,
        "notes": runner.notes,
        "load_average": {"before": load_before, "after": _report.loadavg()},
        "elapsed_s": time.perf_counter() - t_start,
    }


def _plot_only(console: Any, path: Path, args: argparse.Namespace) -> int:
    """Any mode's saved JSON: its tables again; the sweep's also its plots."""
    doc = _report.load(path)
    schema = doc["schema"].split("/")[0]
    printers = {
        "twopass-tune": "_tune",
        "twopass-bench-ce": "_cross_entropy",
        "twopass-bench-cuda": "_softmax_cuda",
        "twopass-bench-ce-cuda": "_cross_entropy_cuda",
        "twopass-bench-distributed": "_distributed",
        "twopass-bench-lce": "_linear_cross_entropy",
    }
    if schema == "twopass-bench-compile":
        from ._cuda import print_compile_report

        print_compile_report(console, doc)
        return 0
    if schema in printers:
        import importlib

        importlib.import_module(f"{__package__}.{printers[schema]}").print_report(console, doc)
        return 0
    if schema != "twopass-bench":
        raise ValueError(f"{path}: schema {doc['schema']!r} is not one this version reads")
    _analysis.ratios(doc["results"])  # with this version's definitions (older runs lack "twopass auto")
    _report.print_report(console, doc)
    if args.no_plots:
        return 0
    from . import _plots

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
    dtypes = _choose(_split(args.dtypes), _tune.TUNE_DTYPES, _tune.TUNE_DTYPES_ALLOWED, "--dtypes")
    ops = _choose(_split(args.ops), _tune.TUNE_OPS, _tune.TUNE_OPS, "--ops")
    threads = _threads(args)
    if args.sizes:
        shapes = [_plan.parse_size(s) for s in _split(args.sizes) or []]
    else:
        shapes = list(_tune.QUICK_SHAPES if args.quick else _tune.FULL_SHAPES)
    budget = _fixed_repeats(_tune.QUICK_BUDGET if args.quick else _tune.FULL_BUDGET, args.repeats)
    caches = _dispatch.cache_sizes()
    t0 = time.perf_counter()
    load_before = _report.load_warning(console)
    steps = len(dtypes) * len(shapes) * len(threads) * len(ops) * 2
    prefetch_steps = 0 if args.sizes else len(_tune.PREFETCH_SHAPES) * len(threads) * len(_tune.PREFETCH_OPS)
    with _report.progress(console, steps + prefetch_steps, width=56) as advance:
        rounds = _tune.TUNE_ROUNDS if args.quick else _tune.FULL_ROUNDS
        cells = _tune.run(shapes, dtypes, ops, threads, isa, budget, caches, advance, rounds)
        # the prefetch distance: not when --sizes asks for particular cells
        prefetch = [] if args.sizes else _tune.prefetch_cells(isa, threads, budget, caches, advance, rounds)
    doc = _tune.document(
        cells,
        isa=isa,
        argv=argv,
        shapes=shapes,
        dtypes=dtypes,
        ops=ops,
        threads=threads,
        budget=budget,
        rounds=rounds,
        elapsed_s=time.perf_counter() - t0,
        load_average={"before": load_before, "after": _report.loadavg()},
        prefetch=prefetch,
    )
    _tune.print_report(console, doc)
    if args.tune_out:
        path = Path(args.tune_out)
        _report.write_json(doc, path)
    else:
        path = _report.save(doc, Path(args.out), "tune")
    console.print(f"JSON: {path}")
    console.print(f"total time: {doc['elapsed_s']:.0f} s")
    return 0


def _sizes_2d(args: argparse.Namespace, default) -> list[tuple[int, int]]:
    """--sizes as ROWSxCLASSES shapes (the --cross-entropy and --distributed modes)."""
    if not args.sizes:
        return [tuple(s) for s in default]
    shapes = [_plan.parse_size(s) for s in _split(args.sizes) or []]
    bad = [_plan.format_shape(s) for s in shapes if len(s) != 2]
    if bad or not shapes:
        raise ValueError(f"--sizes: ROWSxCLASSES shapes, e.g. 4096x32000 (got {', '.join(bad) or 'none'})")
    return shapes


def _finish(console: Any, doc: dict[str, Any], args: argparse.Namespace, stem: str, report, failed=()) -> int:
    """What every mode ends with: its tables, its JSON, the time; exit 1 if a check failed."""
    report(console, doc)
    path = _report.save(doc, Path(args.out), stem)
    console.print(f"JSON: {path}")
    if "elapsed_s" in doc:
        console.print(f"total time: {doc['elapsed_s']:.0f} s")
    if failed:
        console.print(f"[red]error:[/red] {len(failed)} result(s) disagree with the reference: {'; '.join(failed)}")
        return 1
    return 0


def _cross_entropy_cpu(console: Any, args: argparse.Namespace, argv: list[str]) -> int:
    from . import _cross_entropy as ce

    threads = _threads(args)
    dtypes = _choose(_split(args.dtypes), ce.DTYPES, ce.DTYPES, "--dtypes")
    shapes = _sizes_2d(args, ce.QUICK_SHAPES if args.quick else ce.SHAPES)
    repeats = args.repeats or (5 if args.quick else 7)
    if repeats < 1:
        raise ValueError("--repeats must be >= 1")
    doc = ce.run(
        console,
        argv,
        shapes=shapes,
        dtypes=dtypes,
        threads=threads,
        repeats=repeats,
        torch_compile=not args.no_torch_compile,
    )
    return _finish(console, doc, args, "bench-ce", ce.print_report)


def _linear_cross_entropy(console: Any, args: argparse.Namespace, argv: list[str]) -> int:
    from . import _linear_cross_entropy as lce

    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device here")
    threads = [1] if cuda else _threads(args)
    dtypes = _choose(_split(args.dtypes), lce.CUDA_DTYPES if cuda else lce.DTYPES, lce.DTYPES, "--dtypes")
    default = lce.CUDA_SHAPES if cuda else lce.QUICK_SHAPES if args.quick else lce.SHAPES
    if args.sizes:
        texts = [s.lower().split("x") for s in _split(args.sizes) or []]
        if not texts or any(len(p) != 3 for p in texts):
            raise ValueError("--sizes: NxHxV shapes, e.g. 8192x1024x32000")
        shapes = [tuple(_plan._parse_count(p.strip()) for p in parts) for parts in texts]
    else:
        shapes = [tuple(s) for s in default]
    repeats = args.repeats or 3
    if repeats < 1:
        raise ValueError("--repeats must be >= 1")
    doc = lce.run(
        console,
        argv,
        shapes=shapes,
        dtypes=dtypes,
        threads=threads,
        repeats=repeats,
        device=args.device,
        torch_compile=not args.no_torch_compile,
    )
    return _finish(console, doc, args, "bench-lce", lce.print_report)


def _cuda_mode(console: Any, args: argparse.Namespace, argv: list[str], cross_entropy: bool) -> int:
    """--device cuda: the softmax family (_softmax_cuda) or, with --cross-entropy, the loss
    (_cross_entropy_cuda); --compile: their kernels built for sm_90, no GPU needed."""
    from . import _cross_entropy_cuda, _cuda, _softmax_cuda

    mod = _cross_entropy_cuda if cross_entropy else _softmax_cuda
    dev = _cuda.open_device(compile_only=args.compile)
    dtypes = _choose(_split(args.dtypes), mod.DTYPES, mod.DTYPES, "--dtypes")
    if args.compile:
        if args.quick or args.sizes or args.sweep or args.variants:
            raise ValueError("--compile builds the default shapes' kernels: no --quick, --sizes, --sweep, --variants")
        if cross_entropy:
            doc = mod.compile_report(argv, dtypes, Path(args.compile_dir))
        else:
            ops = _choose(_split(args.ops), mod.OPS, mod.OPS, "--ops")
            doc = mod.compile_report(argv, ops, dtypes, Path(args.compile_dir))
        return _finish(console, doc, args, "compile", _cuda.print_compile_report)
    if cross_entropy:
        shapes = _sizes_2d(
            args, mod.INTERPRET_SHAPES if dev.interpret else mod.QUICK_SHAPES if args.quick else mod.SHAPES
        )
        doc = mod.run(
            dev,
            console,
            argv,
            shapes=shapes,
            dtypes=dtypes,
            variants=args.variants,
            sweep=args.sweep,
            torch_compile=not args.no_torch_compile,
        )
        return _finish(console, doc, args, "bench-ce-cuda", mod.print_report, mod.failures(doc))
    ops = _choose(_split(args.ops), mod.OPS, mod.OPS, "--ops")
    if args.sizes:
        shapes = mod.shapes_from_sizes([_plan.parse_size(s) for s in _split(args.sizes) or []])
    else:
        shapes = mod.INTERPRET_SHAPES if dev.interpret else mod.QUICK_SHAPES if args.quick else mod.SHAPES
    doc = mod.run(dev, console, argv, shapes=shapes, ops=ops, dtypes=dtypes, sweep=args.sweep)
    return _finish(console, doc, args, "bench-cuda", mod.print_report, mod.failures(doc))


def _distributed(console: Any, args: argparse.Namespace, argv: list[str]) -> int:
    from . import _distributed as dd

    default = dd.QUICK_WORLDS if args.quick else dd.WORLDS
    try:
        worlds = [int(w) for w in _split(args.worlds) or []] if args.worlds else list(default)
    except ValueError:
        raise ValueError("--worlds: rank counts, e.g. 2,4") from None
    shapes = _sizes_2d(args, dd.QUICK_SHAPES if args.quick else dd.SHAPES)
    repeats = args.repeats or (dd.QUICK_REPEATS if args.quick else dd.REPEATS)
    if repeats < 1:
        raise ValueError("--repeats must be >= 1")
    doc = dd.run(console, argv, worlds=worlds, shapes=shapes, repeats=repeats, device=args.device)
    return _finish(console, doc, args, "bench-distributed", dd.print_report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
