"""The logsumexp Triton kernels (twopass.triton.logsumexp) against a float64 reference:
the forward (softmax.py's kernels with the logsumexp op: one phase, the row's last chunk
merges) and the element-wise backward kernels.

Under Triton's interpreter where CUDA is absent, with the thresholds shrunk (`SMALL`) so
that every kernel runs on small shapes; with a GPU also the default thresholds and larger
shapes (`test_cuda_*`). Shared shapes, inputs and bounds: _triton_util.py.
"""

from __future__ import annotations

import pytest

from _triton_util import (
    CFG,
    CUDA_LARGE,
    DEV,
    DTYPES,
    LAYOUTS,
    LOGSUMEXP,
    PATH_CASES,
    SPECIAL_CASES,
    SPECIAL_IDS,
    case_id,
    check_forward,
    cuda_only,
    kernels_run,
    randn,
    run_fwd,
    seed_of,
    special_input,
    tiny_out,
    u_of,
    u_out,
)

torch = pytest.importorskip("torch")
K = LOGSUMEXP
OP = "logsumexp"


# ----------------------------------------------------------------------------------
# Forward: every path, dtype.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PATH_CASES, ids=case_id)
def test_forward_paths(case, dtype):
    shape, dim, path, _why, cfg = case
    x = randn(shape, dtype, seed=seed_of(shape, OP))
    ran = kernels_run(lambda: check_forward(OP, x, run_fwd(OP, x, dim, cfg), dim))
    assert ran == [path], (ran, path)


@pytest.mark.parametrize("keepdim", (False, True))
def test_keepdim(keepdim):
    x = randn((3, 100, 4), torch.float32)
    y = run_fwd(OP, x, 1, keepdim=keepdim)
    check_forward(OP, x, y, 1, keepdim)


# ----------------------------------------------------------------------------------
# Layouts: transposed, permuted, sliced, expanded, 0-d, empty, n = 1.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layouts(name):
    make, dim, kind = LAYOUTS[name]
    x = make()
    ran = kernels_run(lambda: check_forward(OP, x, run_fwd(OP, x, dim), dim))
    assert len(ran) == 1 and ran[0].startswith(kind), ran


def test_scalar_and_empty():
    x = torch.tensor(3.0, device=DEV)
    assert run_fwd(OP, x, 0).item() == 3.0
    e = torch.empty((3, 0), device=DEV)
    lse = run_fwd(OP, e, -1)
    assert lse.shape == (3,) and torch.isneginf(lse).all()
    assert run_fwd(OP, torch.empty((0, 4), device=DEV), -1).shape == (0,)


def test_errors():
    with pytest.raises(TypeError, match="int32"):
        run_fwd(OP, torch.zeros(3, dtype=torch.int32, device=DEV), -1)


# ----------------------------------------------------------------------------------
# Special values on every path: NaN, +inf, all -inf, some -inf, huge finite values.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(**SPECIAL_CASES, ids=SPECIAL_IDS)
def test_special_values(n, dim):
    x = special_input(n, dim)
    y = run_fwd(OP, x, dim)
    check_forward(OP, x, y, dim)
    y64 = y.double().cpu()
    assert torch.isnan(y64[1]) and y64[2] == float("inf") and y64[3] == float("-inf") and torch.isnan(y64[7])
    assert abs(y64[5] / 3e38 - 1) < 1e-6  # 3e38 + log(n): no overflow


@pytest.mark.parametrize("dim", (-1, 0))
def test_deterministic(dim):
    x = randn((2, 500) if dim == -1 else (150, 9), torch.float32)  # the split kernels
    a, b = run_fwd(OP, x, dim), run_fwd(OP, x, dim)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------
# Backward.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,dim,path,dtype,keepdim",
    [
        ((5, 300), -1, "lse_bwd_row", torch.float32, False),
        ((5, 300), -1, "lse_bwd_row", torch.bfloat16, True),
        # odd rows start off the 16-byte grid: whole vectors, the ends stored apart; 4099 +
        # the shift spans two blocks of 4096, so a row's last partial vector is in block 1
        ((5, 301), -1, "lse_bwd_row", torch.float32, False),
        ((7, 4099), -1, "lse_bwd_row", torch.bfloat16, False),
        ((300, 6), 0, "lse_bwd_col", torch.float32, True),
        ((300, 6), 0, "lse_bwd_col", torch.float16, False),
        ((3, 40, 5), 1, "lse_bwd_col", torch.float32, False),
    ],
)
def test_backward(shape, dim, path, dtype, keepdim):
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
@cuda_only
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("shape,dim", CUDA_LARGE)
def test_cuda_large(shape, dim, dtype):
    x = randn(shape, dtype)
    y = run_fwd(OP, x, dim, cfg=None)  # the default settings (not the tests' SMALL)
    check_forward(OP, x, y, dim)
    assert torch.equal(y, run_fwd(OP, x, dim, cfg=None)), "not deterministic"


@cuda_only
def test_cuda_transposed_large():
    x = randn((4096, 3000), torch.float32).t()
    for dim in (0, 1):
        check_forward(OP, x, run_fwd(OP, x, dim), dim)
