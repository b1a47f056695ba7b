"""Shared setup and helpers of the Triton tests (test_*_triton.py): the interpreter where CUDA
is absent, the kernels' modules (loaded once), the launch trace, and what the softmax and
logsumexp tests share (small launcher settings, the shapes that reach each kernel, inputs,
the float64 reference and its bounds).

Importing this module sets TRITON_INTERPRET=1 when no CUDA device is present, before triton
decorates any kernel, and skips the importing test module when torch or triton is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import zlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates the kernels
pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEV = "cpu" if INTERPRET else "cuda"


def load(name: str):
    """twopass.triton.<name>; loaded from its path when the twopass package itself cannot be
    imported (e.g. its compiled CPU core is not built for this Python)."""
    try:
        return importlib.import_module(f"twopass.triton.{name}")
    except ImportError:
        if "_twopass_triton" not in sys.modules:
            root = Path(__file__).resolve().parents[1] / "src" / "twopass" / "triton"
            spec = importlib.util.spec_from_file_location(
                "_twopass_triton", root / "__init__.py", submodule_search_locations=[str(root)]
            )
            mod = importlib.util.module_from_spec(spec)
            sys.modules["_twopass_triton"] = mod
            spec.loader.exec_module(mod)
        return importlib.import_module(f"_twopass_triton.{name}")


LAUNCH = load("_launch")  # the launch trace (_TRACE) every launcher writes to
SOFTMAX = load("softmax")
LOGSUMEXP = load("logsumexp")

cuda_only = pytest.mark.skipif(INTERPRET, reason="needs a CUDA device (runs the real kernels)")


def traced(fn):
    """(the kernels fn launched, in order, by the names the launchers trace; fn's result)."""
    LAUNCH._TRACE = []
    try:
        out = fn()
        return [name for name, _ in LAUNCH._TRACE], out
    finally:
        LAUNCH._TRACE = None


def kernels_run(fn):
    """The kernels a call launched (from the launchers' trace)."""
    return traced(fn)[0]


# ----------------------------------------------------------------------------------
# The softmax-family launchers (softmax, log_softmax, logsumexp): settings and shapes.
# ----------------------------------------------------------------------------------
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Every threshold shrunk: rows longer than 64 are split into chunks of 64 (tiles [4, 16]),
# "L2" holds 2 KB between the two phases, column tiles are 8 wide.
SMALL = dict(
    fused_max_n=64,
    fused_elems=256,
    split_tile_elems=64,
    split_warps=1,
    split_cw=16,
    chunk_min=64,
    chunk_max=64,
    k_max=8,
    col_tile_elems=64,
    col_fused_elems=256,
    col_k_max=4,
    col_bq=8,
    col_chunk_min_elems=128,
    l2_bytes=8192,
)
CFG = SMALL  # every test runs the small settings; PATH_CASES adds the defaults on a GPU


def run_fwd(op: str, x: torch.Tensor, dim: int, cfg=CFG, **kw) -> torch.Tensor:
    if op == "logsumexp":
        return LOGSUMEXP._logsumexp_forward(x, dim, cfg=cfg, **kw)
    return SOFTMAX._softmax_forward(x, dim, op == "log_softmax", cfg=cfg, **kw)


# (shape, dim, the kernel it must take, why this shape, launcher settings). The SMALL
# cases run everywhere (the interpreter, and the GPU too: the small settings are valid
# there); the default-settings cases need a GPU (too slow for the interpreter).
PATH_CASES = [
    ((5, 50), -1, "row_fused", "row fits in one tile (n < BLOCK_N = 64): masked tail", SMALL),
    ((3, 64), -1, "row_fused", "n equal to BLOCK_N", SMALL),
    ((7, 100), -1, "row_split", "2 chunks, the second partial; lag 5 < 7 rows: pairs + tails", SMALL),
    ((2, 1000), 1, "row_split", "8 chunks (k_max), chunk of 128 = 2 tiles; lag 1", SMALL),
    ((3, 257), -1, "row_split", "one element past a tile boundary", SMALL),
    ((2, 3, 70), 2, "row_split", "3-D, rows from two merged dims", SMALL),
    ((40, 7), 0, "col_split", "strided axis, n = 40 > 32: 3 chunks of 16 rows, tiles of 8", SMALL),
    ((20, 13), 0, "col_fused", "strided axis, n*BQ <= 256: one tile, Q = 13 masked", SMALL),
    ((300, 5), 0, "col_split", "strided axis, long: 4 chunks (col_k_max), Q = 5", SMALL),
    ((2, 90, 12), 1, "col_split", "middle dim of a 3-D tensor: P = 2, Q = 12 (two tiles of 8)", SMALL),
]
if not INTERPRET:
    PATH_CASES += [
        ((4096, 1000), -1, "row_fused", "rows of 1000 (not a power of two), 4 per program", None),
        ((1024, 16384), -1, "row_fused", "the longest fused row", None),
        ((128, 16384), -1, "row_split", "rows that fit in registers, too few to fill the GPU", None),
        ((40, 16385), -1, "row_split", "3 chunks of 8192 (parallelism), the last of 1 element", None),
        ((3, (1 << 21) + 5), -1, "row_split", "129 chunks of 16384, rows longer than the lag budget", None),
        ((700, 300), 0, "col_split", "strided axis: chunks of rows", None),
        ((30, 300), 0, "col_fused", "strided axis, n*BQ <= 8192 (float32 and bfloat16)", None),
    ]


def case_id(c) -> str:
    return f"{'x'.join(map(str, c[0]))}-d{c[1]}-{'small' if c[4] else 'default'}"


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) % 1000  # not hash(): str hashes vary per run


# Layouts: (make the input, dim, the kernel family it must take). Transposed, permuted,
# sliced, expanded, n = 1.
LAYOUTS = {
    # a transposed matrix: dim 0 has unit stride (row kernels over strided rows)...
    "transposed-d0": (lambda: randn((90, 12), torch.float32).t(), 0, "row"),
    # ...dim 1 is strided, dim 0 has unit stride (column kernels, q along dim 0)
    "transposed-d1": (lambda: randn((90, 12), torch.float32).t(), 1, "col"),
    "permuted-3d": (lambda: randn((3, 2, 70), torch.float32).permute(2, 0, 1), 0, "row"),
    "sliced-gap": (lambda: randn((6, 150), torch.float32)[:, 10:140], -1, "row"),
    "sliced-rows": (lambda: randn((12, 100), torch.float32)[::2], -1, "row"),
    "expanded": (lambda: randn((1, 100), torch.float32).expand(3, 100), -1, "row"),
    "no-unit-stride": (lambda: randn((8, 9, 100), torch.float32)[:, ::2, ::2], 1, "col"),
    "n-is-1": (lambda: randn((9, 1), torch.float32), -1, "row"),
    "n-is-1-d0": (lambda: randn((1, 9), torch.float32), 0, "row"),
}

# Special values, for every path: NaN, +inf, all -inf, some -inf, huge finite values.
FMAX = torch.finfo(torch.float32).max


def special_rows(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((8, n), generator=gen, dtype=torch.float64) * 3
    x[1, n // 2] = float("nan")
    x[2, n - 1] = float("inf")
    x[3, :] = float("-inf")
    x[4, ::3] = float("-inf")
    x[5, :] = 3e38
    x[6, 0], x[6, 1:] = FMAX, -FMAX
    x[7, -2:] = float("inf")
    x[7, 0] = float("nan")  # NaN and +inf together: NaN
    return x.float()


# (n, dim) of test_special_values: the fused and split row kernels, the fused and split
# column kernels (dim 0: the special rows become columns).
SPECIAL_CASES = dict(argnames="n,dim", argvalues=[(40, -1), (300, -1), (20, 0), (300, 0)])
SPECIAL_IDS = ["fused", "split", "colf", "cols"]


def special_input(n: int, dim: int) -> torch.Tensor:
    x = special_rows(n)
    if dim == 0:
        x = x.t().contiguous()  # the special rows become columns: column kernels
    return x.to(DEV)


# Shapes of test_cuda_large (default settings, at their boundaries).
CUDA_LARGE = [((2048, 4096), 0), ((4096, 2048), 1), ((3, 5000, 64), 1), ((1, 1 << 24), -1), ((8, 1 << 20), -1)]


# ----------------------------------------------------------------------------------
# Inputs, reference and bounds.
# ----------------------------------------------------------------------------------
def randn(shape, dtype, scale=4.0, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEV)


def u_of(dtype) -> float:
    return torch.finfo(dtype).eps / 2


def u_out(dtype) -> float:
    """The rounding of the result to its format: half an ulp, except that Triton's
    interpreter truncates float32 -> bfloat16 (a whole ulp); the GPU rounds to nearest."""
    if dtype == torch.float32:
        return 0.0
    return u_of(dtype) * (2.0 if INTERPRET and dtype == torch.bfloat16 else 1.0)


def ref_forward(op: str, x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    x64 = x.detach().to("cpu", torch.float64)
    if op == "softmax":
        return torch.softmax(x64, dim)
    if op == "log_softmax":
        return torch.log_softmax(x64, dim)
    return torch.logsumexp(x64, dim, keepdim=keepdim)


# |y - ref| <= A * u32 * scale + u_out * |ref| + tiny, where scale is
#   softmax: (1 + |x - lse|) * |ref|   (x - max is rounded: the conditioning every float softmax pays)
#   log_softmax, logsumexp: |ref| + 1
# u32 covers the float32 arithmetic (ex2.approx on the GPU), u_out the final rounding to
# float16/bfloat16; tiny covers results flushed to zero under the smallest float32 normal.
def tiny_out(dtype) -> float:
    """Absolute error allowed near zero: results under float32's smallest normal may be
    flushed to zero on the GPU; float16 results there are subnormal (absolute rounding)."""
    fi = torch.finfo(dtype)
    return 2.0 * torch.finfo(torch.float32).tiny + (0.0 if dtype == torch.float32 else fi.tiny * fi.eps)


A = {"softmax": 16.0, "log_softmax": 16.0, "logsumexp": 16.0}


def check_forward(op: str, x: torch.Tensor, y: torch.Tensor, dim: int, keepdim: bool = False) -> None:
    ref = ref_forward(op, x, dim, keepdim)
    y64 = y.detach().to("cpu", torch.float64)
    assert y64.shape == ref.shape, (y64.shape, ref.shape)
    assert torch.equal(torch.isnan(y64), torch.isnan(ref)), f"{op}: NaN pattern differs"
    refc = ref.to(y.dtype).double()  # where the result overflows y's format
    inf = torch.isinf(refc)
    assert torch.equal(y64[inf], refc[inf]), f"{op}: infinities differ"
    fin = ~inf & ~torch.isnan(ref)
    u32, uo = u_of(torch.float32), u_out(y.dtype)
    tiny = tiny_out(y.dtype)
    with torch.no_grad():
        if op == "softmax":
            lse = torch.logsumexp(x.detach().to("cpu", torch.float64), dim, keepdim=True)
            cond = (x.detach().to("cpu", torch.float64) - lse).abs().nan_to_num(0.0, 0.0, 0.0)
            scale = (1 + cond) * ref.abs()
        else:
            scale = ref.abs() + 1
        bound = A[op] * u32 * scale + uo * ref.abs() + tiny
        err = (y64 - ref).abs()
    bad = fin & ~(err <= bound)
    if bad.any():
        i = tuple(torch.nonzero(bad)[0].tolist())
        raise AssertionError(
            f"{op} {y.dtype}: {int(bad.sum())} elements out of bound; first at {i}: "
            f"y={y64[i].item()!r} ref={ref[i].item()!r} err={err[i].item():.3g} bound={bound[i].item():.3g}"
        )
