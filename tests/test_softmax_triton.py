"""The Triton kernels (twopass.triton) against a float64 reference.

Without a GPU (CI) they run under Triton's interpreter (TRITON_INTERPRET=1, set here when
no CUDA device is present) on CPU tensors, with every size threshold shrunk (`SMALL`) so
that each kernel and each branch runs on small shapes: the fused row kernel, the split row
kernel (several chunks, lag shorter and longer than the batch), the fused and the split
column kernels, and their backward and logsumexp forms. With a GPU the same tests run on
the real kernels, plus cases with the default thresholds (`PATH_CASES`) and larger shapes
(`test_cuda_*`). About a minute on one core under the interpreter.
"""

from __future__ import annotations

import zlib

import pytest

from _triton_util import DEV, INTERPRET, load

torch = pytest.importorskip("torch")
K = load("softmax")
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
    k_max=8,
    col_tile_elems=64,
    col_fused_elems=256,
    col_k_max=4,
    col_bq=8,
    col_chunk_min_elems=128,
    l2_bytes=8192,
)
CFG = SMALL  # every test below runs the small settings; PATH_CASES adds the defaults on a GPU


# ----------------------------------------------------------------------------------
# Reference and bounds.
# ----------------------------------------------------------------------------------
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


def check_backward(log: bool, g: torch.Tensor, y: torch.Tensor, dx: torch.Tensor, dim: int) -> None:
    g64, y64 = g.to("cpu", torch.float64), y.to("cpu", torch.float64)
    if log:
        ref = g64 - torch.exp(y64) * g64.sum(dim, keepdim=True)
        scale = g64.abs() + torch.exp(y64) * g64.abs().sum(dim, keepdim=True)
    else:
        ref = y64 * (g64 - (g64 * y64).sum(dim, keepdim=True))
        scale = y64.abs() * (g64.abs() + (g64 * y64).abs().sum(dim, keepdim=True))
    dx64 = dx.to("cpu", torch.float64)
    uo = u_out(dx.dtype)
    bound = 32 * u_of(torch.float32) * scale + uo * ref.abs() + tiny_out(dx.dtype)
    err = (dx64 - ref).abs()
    assert not torch.isnan(dx64).any()
    i = (err - bound).argmax()
    assert (err <= bound).all(), f"err {err.flatten()[i].item():.3g} > bound {bound.flatten()[i].item():.3g}"


def randn(shape, dtype, scale=4.0, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEV)


def run_fwd(op: str, x: torch.Tensor, dim: int, cfg=CFG, **kw) -> torch.Tensor:
    if op == "logsumexp":
        return K._logsumexp_forward(x, dim, cfg=cfg, **kw)
    return K._softmax_forward(x, dim, op == "log_softmax", cfg=cfg, **kw)


def kernels_run(fn):
    """The kernels a call launched (from the launcher's trace)."""
    K._TRACE = []
    try:
        fn()
        return [name for name, _ in K._TRACE]
    finally:
        K._TRACE = None


OPS = ("softmax", "log_softmax", "logsumexp")

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
        ((64, 16384), -1, "row_fused", "the longest fused row", None),
        ((40, 16385), -1, "row_split", "3 chunks of 8192 (parallelism), the last of 1 element", None),
        ((3, (1 << 21) + 5), -1, "row_split", "129 chunks of 16384, rows longer than the lag budget", None),
        ((700, 300), 0, "col_split", "strided axis: chunks of rows", None),
        ((30, 300), 0, "col_fused", "strided axis, n*BQ <= 8192 (float32 and bfloat16)", None),
    ]


def case_id(c) -> str:
    return f"{'x'.join(map(str, c[0]))}-d{c[1]}-{'small' if c[4] else 'default'}"


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) % 1000  # not hash(): str hashes vary per run


# ----------------------------------------------------------------------------------
# Forward: every path, op, dtype.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", PATH_CASES, ids=case_id)
def test_forward_paths(case, op, dtype):
    shape, dim, path, _why, cfg = case
    x = randn(shape, dtype, seed=seed_of(shape, op))
    ran = kernels_run(lambda: check_forward(op, x, run_fwd(op, x, dim, cfg), dim))
    assert ran == [path], (ran, path)


@pytest.mark.parametrize("keepdim", (False, True))
def test_logsumexp_keepdim(keepdim):
    x = randn((3, 100, 4), torch.float32)
    y = run_fwd("logsumexp", x, 1, keepdim=keepdim)
    check_forward("logsumexp", x, y, 1, keepdim)


# ----------------------------------------------------------------------------------
# Layouts: transposed, permuted, sliced, expanded, 0-d, empty, n = 1, out=, in place.
# ----------------------------------------------------------------------------------
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


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layouts(name, op):
    make, dim, kind = LAYOUTS[name]
    x = make()
    ran = kernels_run(lambda: check_forward(op, x, run_fwd(op, x, dim), dim))
    assert len(ran) == 1 and ran[0].startswith(kind), ran
    if op != "logsumexp":
        y = run_fwd(op, x, dim)
        assert y.shape == x.shape


def test_output_strides_follow_input():
    x = randn((90, 12), torch.float32).t()
    y = run_fwd("softmax", x, 1)
    assert y.stride() == x.stride()


def test_scalar_and_empty():
    x = torch.tensor(3.0, device=DEV)
    assert run_fwd("softmax", x, 0).item() == 1.0
    assert run_fwd("log_softmax", x, -1).item() == 0.0
    assert run_fwd("logsumexp", x, 0).item() == 3.0
    e = torch.empty((3, 0), device=DEV)
    assert run_fwd("softmax", e, -1).shape == (3, 0)
    lse = run_fwd("logsumexp", e, -1)
    assert lse.shape == (3,) and torch.isneginf(lse).all()
    assert run_fwd("logsumexp", torch.empty((0, 4), device=DEV), -1).shape == (0,)


@pytest.mark.parametrize("n", (50, 300))
def test_out_poisoned_and_in_place(n):
    x = randn((5, n), torch.float32)
    ref = run_fwd("softmax", x, -1)
    out = torch.full_like(x, float("nan"))  # every element must be written
    assert run_fwd("softmax", x, -1, out=out) is out
    assert torch.equal(out, ref)
    xc = x.clone()
    run_fwd("softmax", xc, -1, out=xc)  # in place: each chunk is read before it is written
    assert torch.equal(xc, ref)
    t = torch.full((n, 5), float("nan"), device=DEV).t()  # other strides: via a temporary
    run_fwd("softmax", x, -1, out=t)
    assert torch.equal(t, ref)


def test_errors():
    with pytest.raises(TypeError, match="float64"):
        run_fwd("softmax", torch.zeros(3, dtype=torch.float64, device=DEV), -1)
    with pytest.raises(TypeError, match="int32"):
        run_fwd("logsumexp", torch.zeros(3, dtype=torch.int32, device=DEV), -1)
    with pytest.raises(IndexError):
        run_fwd("softmax", torch.zeros(3, 4, device=DEV), 2)
    with pytest.raises(ValueError, match="out"):
        run_fwd("softmax", torch.zeros(3, 4, device=DEV), -1, out=torch.zeros(4, 3, device=DEV))
    with pytest.raises(ValueError, match="unknown config"):
        K._softmax_forward(torch.zeros(3, 4, device=DEV), cfg={"nope": 1})


# ----------------------------------------------------------------------------------
# Special values on every path: NaN, +inf, all -inf, some -inf, huge finite values.
# ----------------------------------------------------------------------------------
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


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("n,dim", [(40, -1), (300, -1), (20, 0), (300, 0)], ids=["fused", "split", "colf", "cols"])
def test_special_values(n, dim, op):
    x = special_rows(n)
    if dim == 0:
        x = x.t().contiguous()  # the special rows become columns: column kernels
    x = x.to(DEV)
    y = run_fwd(op, x, dim)
    check_forward(op, x, y, dim)
    y64 = y.double().cpu()
    if dim == 0 and op != "logsumexp":
        y64 = y64.t()
    if op == "softmax":
        assert torch.isnan(y64[[1, 2, 3, 7]]).all()
        assert (y64[4, ::3] == 0).all()
        assert torch.allclose(y64[5], torch.full((n,), 1.0 / n, dtype=torch.float64))
        assert y64[6, 0] == 1 and (y64[6, 1:] == 0).all()
    elif op == "log_softmax":
        assert torch.isnan(y64[[1, 2, 3, 7]]).all()
        assert torch.isneginf(y64[4, ::3]).all()
    else:
        assert torch.isnan(y64[1]) and y64[2] == float("inf") and y64[3] == float("-inf") and torch.isnan(y64[7])
        assert abs(y64[5] / 3e38 - 1) < 1e-6  # 3e38 + log(n): no overflow


def test_huge_pair():
    x = torch.tensor([[3e38, 3e38]], device=DEV)
    assert torch.equal(run_fwd("softmax", x, -1).cpu(), torch.tensor([[0.5, 0.5]]))


# ----------------------------------------------------------------------------------
# Properties and determinism.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", (50, 300))
def test_properties(n):
    x = randn((6, n), torch.float32)
    y = run_fwd("softmax", x, -1).double().cpu()
    assert ((y >= 0) & (y <= 1)).all()
    assert torch.allclose(y.sum(-1), torch.ones(6, dtype=torch.float64), atol=n * 2e-7)
    y2 = run_fwd("softmax", x + 1000.0, -1).double().cpu()  # shift invariance
    assert torch.allclose(y, y2, rtol=1e-3, atol=1e-12)


@pytest.mark.parametrize("dim", (-1, 0))
def test_deterministic(dim):
    x = randn((2, 500) if dim == -1 else (150, 9), torch.float32)  # the split kernels
    for op in OPS:
        a, b = run_fwd(op, x, dim), run_fwd(op, x, dim)
        assert torch.equal(a, b), op


# ----------------------------------------------------------------------------------
# Backward.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)  # float16: forward tests
@pytest.mark.parametrize("log", (False, True), ids=("softmax", "log_softmax"))
@pytest.mark.parametrize("case", PATH_CASES, ids=case_id)
def test_backward_paths(case, log, dtype):
    shape, dim, path, _why, cfg = case
    x = randn(shape, torch.float32, seed=3)
    y = K._softmax_forward(x, dim, log, cfg=cfg).to(dtype)
    g = randn(shape, dtype, scale=1.0, seed=4)
    ran = kernels_run(lambda: check_backward(log, g, y, K._softmax_backward(g, y, dim, log, cfg=cfg), dim))
    assert ran == [path], (ran, path)


def test_backward_mixed_strides():
    x = randn((90, 12), torch.float32).t()  # y gets these strides, g is contiguous
    y = K._softmax_forward(x, 1, cfg=CFG)
    g = randn((12, 90), torch.float32, seed=5)
    dx = K._softmax_backward(g, y, 1, cfg=CFG)
    check_backward(False, g, y, dx, 1)


def test_backward_matches_autograd():
    x = randn((4, 300), torch.float64).float()
    g = randn((4, 300), torch.float32, seed=7)
    for log in (False, True):
        xr = x.detach().cpu().double().requires_grad_()
        fn = torch.log_softmax if log else torch.softmax
        fn(xr, -1).backward(g.cpu().double())
        y = K._softmax_forward(x, -1, log, cfg=CFG)
        dx = K._softmax_backward(g, y, -1, log, cfg=CFG)
        assert torch.allclose(dx.cpu().double(), xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "shape,dim,path,dtype,keepdim",
    [
        ((5, 300), -1, "lse_bwd_row", torch.float32, False),
        ((5, 300), -1, "lse_bwd_row", torch.bfloat16, True),
        ((300, 6), 0, "lse_bwd_col", torch.float32, True),
        ((300, 6), 0, "lse_bwd_col", torch.float16, False),
        ((3, 40, 5), 1, "lse_bwd_col", torch.float32, False),
    ],
)
def test_logsumexp_backward(shape, dim, path, dtype, keepdim):
    x = randn(shape, dtype)
    lse = K._logsumexp_forward(x, dim, keepdim, cfg=CFG)
    g = randn(lse.shape, dtype, scale=1.0, seed=9)
    ran = kernels_run(lambda: K._logsumexp_backward(g, x, lse, dim, keepdim, cfg=CFG))
    assert ran == [path]
    dx = K._logsumexp_backward(g, x, lse, dim, keepdim, cfg=CFG)
    x64, l64, g64 = (t.cpu().double() for t in (x, lse, g))
    if not keepdim:
        l64, g64 = l64.unsqueeze(dim), g64.unsqueeze(dim)
    ref = g64 * torch.exp(x64 - l64)
    uo = u_out(dtype)
    bound = (16 * u_of(torch.float32) * (1 + (x64 - l64).abs()) + uo) * ref.abs() + tiny_out(dtype)
    assert ((dx.cpu().double() - ref).abs() <= bound).all()


# ----------------------------------------------------------------------------------
# CUDA only: the default thresholds on shapes at their boundaries.
# ----------------------------------------------------------------------------------
cuda_only = pytest.mark.skipif(INTERPRET, reason="needs a CUDA device (runs the real kernels)")


@cuda_only
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize(
    "shape,dim",
    [((2048, 4096), 0), ((4096, 2048), 1), ((3, 5000, 64), 1), ((1, 1 << 24), -1), ((8, 1 << 20), -1)],
)
def test_cuda_large(shape, dim, dtype):
    x = randn(shape, dtype)
    for op in OPS:
        y = run_fwd(op, x, dim)
        check_forward(op, x, y, dim)
        assert torch.equal(y, run_fwd(op, x, dim)), "not deterministic"


@cuda_only
def test_cuda_transposed_large():
    x = randn((4096, 3000), torch.float32).t()
    for dim in (0, 1):
        for op in OPS:
            check_forward(op, x, run_fwd(op, x, dim), dim)
