"""The softmax and log_softmax Triton kernels (twopass.triton.softmax) against a float64
reference, forward and backward.

Without a GPU (CI) they run under Triton's interpreter (TRITON_INTERPRET=1, set by
_triton_util when no CUDA device is present) on CPU tensors, with every size threshold
shrunk (`SMALL`) so that each kernel and each branch runs on small shapes: the fused row
kernel, the split row kernel (several chunks, lag shorter and longer than the batch), the
fused and the split column kernels, and their backward forms. With a GPU the same tests run
on the real kernels, plus cases with the default thresholds (`PATH_CASES`) and larger shapes
(`test_cuda_*`). The same kernels with the logsumexp op: test_logsumexp_triton.py.
"""

from __future__ import annotations

import pytest

from _triton_util import (
    CFG,
    CUDA_LARGE,
    DEV,
    DTYPES,
    LAUNCH,
    LAYOUTS,
    PATH_CASES,
    SOFTMAX,
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
K = SOFTMAX
OPS = ("softmax", "log_softmax")


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


# ----------------------------------------------------------------------------------
# Layouts: transposed, permuted, sliced, expanded, 0-d, empty, n = 1, out=, in place.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layouts(name, op):
    make, dim, kind = LAYOUTS[name]
    x = make()
    ran = kernels_run(lambda: check_forward(op, x, run_fwd(op, x, dim), dim))
    assert len(ran) == 1 and ran[0].startswith(kind), ran
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
    e = torch.empty((3, 0), device=DEV)
    assert run_fwd("softmax", e, -1).shape == (3, 0)


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


def launches(fn):
    """(the (kernel name, parameters) fn launched, fn's result)."""
    LAUNCH._TRACE = []
    try:
        out = fn()
        return list(LAUNCH._TRACE), out
    finally:
        LAUNCH._TRACE = None


# Rows of odd length start at unaligned addresses: the row kernels read them on the
# aligned grid below each row (VEC = 16 bytes / element size) and writes the partial vectors
# at the row's ends apart; a pointer that is itself unaligned takes VEC = 1. Sentinels around
# the result catch a store outside it.
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("op", (*OPS, "logsumexp", "softmax_bwd", "log_softmax_bwd"))
@pytest.mark.parametrize("offset", (0, 1), ids=("aligned-ptr", "unaligned-ptr"))
@pytest.mark.parametrize("n,kernel", [(41, "row_fused"), (301, "row_split")])  # 301: 5 chunks of 64
def test_unaligned_rows(n, kernel, offset, op, dtype):
    rows = 9  # the rows start at every residue mod 4 and mod 8
    x = randn((rows * n + offset,), dtype, seed=n)[offset:].view(rows, n)
    a = 16 // x.element_size() if offset == 0 else 1
    if op.endswith("_bwd"):
        log = op == "log_softmax_bwd"

        def nan_padded(t):  # t inside NaN: a neighbour read into a row's sums would show
            buf = torch.full((t.numel() + 32,), float("nan"), dtype=dtype, device=DEV)
            buf[16 - offset : 16 - offset + t.numel()] = t.flatten()
            return buf[16 - offset : 16 - offset + t.numel()].view(rows, n)

        y = nan_padded(SOFTMAX._softmax_forward(x, -1, log, cfg=CFG))
        g = nan_padded(randn((rows, n), dtype, seed=3))
        ran, dx = launches(lambda: SOFTMAX._softmax_backward(g, y, -1, log, cfg=CFG))
        y64, g64 = y.double(), g.double()
        want = g64 - y64.exp() * g64.sum(-1, keepdim=True) if log else y64 * (g64 - (g64 * y64).sum(-1, keepdim=True))
        tol = 4 * u_of(dtype) * want.abs().max().item() + 1e-6
        torch.testing.assert_close(dx.double(), want, rtol=0, atol=tol)
    elif op == "logsumexp":
        ran, y = launches(lambda: run_fwd(op, x, -1))
        check_forward(op, x, y, -1)
    else:
        buf = torch.full((rows * n + 32,), 7.0, dtype=dtype, device=DEV)
        out = buf[16 - offset : 16 - offset + rows * n].view(rows, n)
        ran, y = launches(lambda: run_fwd(op, x, -1, out=out))
        assert y is out
        check_forward(op, x, y, -1)
        assert torch.all(buf[: 16 - offset] == 7.0), "a store before the result"
        assert torch.all(buf[16 - offset + rows * n :] == 7.0), "a store after the result"
    assert [(nm, p["VEC"]) for nm, p in ran] == [(kernel, a)], ran


def test_torch_layer_strides_match_the_fake(monkeypatch):
    """twopass.torch's CUDA branch gives the strides its fake implementation promises
    (torch.empty_like of the input), also for a non-dense input that the kernels compute on
    a C-order copy: torch.compile plans with the fake's strides. Run here through the
    interpreter by letting the branch take CPU tensors."""
    tmod = pytest.importorskip("twopass.torch._softmax")
    lmod = pytest.importorskip("twopass.torch._logsumexp")
    monkeypatch.setattr(tmod, "triton_ok", lambda *ts: True)
    monkeypatch.setattr(lmod, "triton_ok", lambda *ts: True)
    x = randn((6, 8, 40), torch.float32).permute(2, 0, 1)[:, ::2]  # (40, 3, 8): permuted, with gaps
    for log in (False, True):
        y = tmod._softmax(x, 0, log)
        assert y.stride() == torch.empty_like(x).stride()
        check_forward("log_softmax" if log else "softmax", x, y, 0)
        dx = tmod._softmax_backward(torch.ones_like(x), y, 0, log)
        assert dx.stride() == torch.empty_like(y).stride()
    lse = lmod._logsumexp(x, 0, False)
    dx = lmod._logsumexp_backward(torch.ones_like(lse), x, lse, 0, False)
    assert dx.stride() == torch.empty_like(x).stride()
    torch.testing.assert_close(dx, torch.softmax(x, 0), rtol=1e-5, atol=1e-7)


def test_errors():
    with pytest.raises(TypeError, match="float64"):
        run_fwd("softmax", torch.zeros(3, dtype=torch.float64, device=DEV), -1)
    with pytest.raises(IndexError):
        run_fwd("softmax", torch.zeros(3, 4, device=DEV), 2)
    with pytest.raises(ValueError, match="out"):
        run_fwd("softmax", torch.zeros(3, 4, device=DEV), -1, out=torch.zeros(4, 3, device=DEV))
    with pytest.raises(ValueError, match="unknown config"):
        K._softmax_forward(torch.zeros(3, 4, device=DEV), cfg={"nope": 1})


# ----------------------------------------------------------------------------------
# Special values on every path: NaN, +inf, all -inf, some -inf, huge finite values.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(**SPECIAL_CASES, ids=SPECIAL_IDS)
def test_special_values(n, dim, op):
    x = special_input(n, dim)
    y = run_fwd(op, x, dim)
    check_forward(op, x, y, dim)
    y64 = y.double().cpu()
    if dim == 0:
        y64 = y64.t()
    if op == "softmax":
        assert torch.isnan(y64[[1, 2, 3, 7]]).all()
        assert (y64[4, ::3] == 0).all()
        assert torch.allclose(y64[5], torch.full((n,), 1.0 / n, dtype=torch.float64))
        assert y64[6, 0] == 1 and (y64[6, 1:] == 0).all()
    else:
        assert torch.isnan(y64[[1, 2, 3, 7]]).all()
        assert torch.isneginf(y64[4, ::3]).all()


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


# ----------------------------------------------------------------------------------
# CUDA only: the default thresholds on shapes at their boundaries.
# ----------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("shape,dim", CUDA_LARGE)
def test_cuda_large(shape, dim, dtype):
    x = randn(shape, dtype)
    for op in OPS:
        y = run_fwd(op, x, dim, cfg=None)  # the default settings (not the tests' SMALL)
        check_forward(op, x, y, dim)
        assert torch.equal(y, run_fwd(op, x, dim, cfg=None)), "not deterministic"


@cuda_only
def test_cuda_transposed_large():
    x = randn((4096, 3000), torch.float32).t()
    for dim in (0, 1):
        for op in OPS:
            check_forward(op, x, run_fwd(op, x, dim), dim)


@cuda_only
def test_fast_launch_matches_tritons_path_and_respecializes(monkeypatch):
    """After the first launch of each kind, launches skip Triton's binding
    (_launch._fast_launch calls the kept compiled kernel): the same bits as Triton's own
    path, and an input that specializes differently (a pointer off 16-byte alignment, a
    row length not a multiple of 16) gets a kernel of its own, not one compiled for the
    arguments before it (which would read it with misaligned vector loads)."""
    LAUNCH._COMPILED.clear()
    flat = randn((64 * 4096 + 8,), torch.float32)
    cases = [flat[:-8].view(64, 4096), flat[1:-7].view(64, 4096), flat[:-8].view(4096, 64)[:, :60].contiguous()]
    cases.append(flat[1 : 64 * 4093 + 1].view(64, 4093))
    for x in cases:
        for op in OPS:
            monkeypatch.setattr(LAUNCH, "_FAST_LAUNCH", True)
            first, kept = run_fwd(op, x, -1, cfg=None), run_fwd(op, x, -1, cfg=None)
            monkeypatch.setattr(LAUNCH, "_FAST_LAUNCH", False)
            tritons = run_fwd(op, x, -1, cfg=None)
            assert torch.equal(first, tritons) and torch.equal(kept, tritons)
            check_forward(op, x, kept, -1)
    aligned = {key[4] for key in LAUNCH._COMPILED}
    assert len(aligned) >= 3, "one kept kernel per specialization"


def test_default_plans_are_cached_and_others_are_not():
    """A call with the default settings stores its launch plan under its layout (host time
    on every call otherwise); the next call of that layout reuses it, with the same kernels
    and bits; a call with other settings (cfg=) plans afresh and stores nothing."""
    K._PLANS.clear()
    x = randn((4, 3000), torch.float32)
    first = kernels_run(lambda: run_fwd("softmax", x, -1, cfg=None))
    assert len(K._PLANS) == 1
    y = run_fwd("softmax", x, -1, cfg=None)
    assert kernels_run(lambda: run_fwd("softmax", x, -1, cfg=None)) == first and len(K._PLANS) == 1
    assert torch.equal(y, run_fwd("softmax", x, -1, cfg=None))
    check_forward("softmax", x, y, -1)
    run_fwd("softmax", x, -1)  # the tests' SMALL settings: not cached
    run_fwd("log_softmax", x.t().contiguous().t(), 0, cfg=None)  # another op and layout: a plan of its own
    assert len(K._PLANS) == 2
    assert LAUNCH._cdiv(7, 2) == 4 and LAUNCH._cdiv(8, 2) == 4 and LAUNCH._cdiv(0, 3) == 0
