"""The fused cross-entropy kernels (twopass.triton.cross_entropy) against torch in float64.

Without a GPU they run under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) with the
tiles and chunks shrunk (`SMALL`: tiles of [4, 32] elements, chunks of 128) so that rows of a
few hundred classes take several tiles per pass, several chunks per row and a masked tail, in
both modes: "row" (one program per row, both passes) and "split" (chunks in two phases, with
the lag between them shorter than the batch). With a GPU the same tests run on the real
kernels, plus larger shapes with the default settings (`test_cuda_*`). About 40 s on two
cores under the interpreter.

Reference: torch.nn.functional.cross_entropy (weight, label_smoothing, ignore_index,
reduction="none") in float64 on the soft-capped logits c * tanh(x / c), plus zc * lse^2, and the
gradient of sum_i (s_ce ce_i + s_z z_i) by torch autograd in float64 (s_ce, s_z as the mean
reduction of docs/cross_entropy.md). The kernels compute in float32 from inputs that the
reference sees exactly. Tolerances, with u = 2^-24 and, per row, mag = max_j |x'_j - lse| + 1:

    ce     32 u ((1 - eps) w_t + eps W / C) (mag + c)        x' - max and log s carry a few u mag
    lse    32 u (mag + c + |lse|)                             (+ the rounding of lse itself)
    z      2 zc |lse| (lse's bound) + 32 u z
    dx_j   32 u (|A| p_j (1 + |x'_j - lse| + c + 2 |x_j| / c) + |B w_j| + [j = t] |T|)
           + u_out |ref| + tiny

where c is the soft-cap (0 without), p_j's relative error grows with |x'_j - lse| (the
rounding of x' - max, as in every float32 softmax) and with the soft-cap's argument (exp2 of
2|x|/c), u_out is the final rounding to float16/bfloat16 (a whole ulp for bfloat16 in the
interpreter, which truncates), and tiny covers results under float32's smallest normal.
Ignored rows must give exactly 0 (loss, z and gradient).
"""

from __future__ import annotations

import math

import pytest

from _triton_util import DEV, INTERPRET, cuda_only, load, traced

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

K = load("cross_entropy")
U = 2.0**-24
FMAX = torch.finfo(torch.float32).max
IGNORE = -100

# Tiles of [4, 32], chunks of 128: C = 299 is 3 tiles per row (the last 43 wide) and 3 chunks;
# "L2" of 16 KB puts 3 float32 rows (6 bfloat16 rows) between a row's two phases, fewer than
# the 8 rows of a batch. 2 "SMs": 8 programs per phase make a batch of 3 rows "few rows".
SMALL = dict(tile_elems=128, cw=32, warps=1, chunk_min=128, chunk_max=128, k_max=8, num_sms=2, l2_bytes=16384)
MODES = {"row": dict(SMALL, split=False), "split": dict(SMALL, split=True)}


# ----------------------------------------------------------------------------------
# Inputs, reference, bounds.
# ----------------------------------------------------------------------------------
def make(n_rows, n, dtype, *, seed=0, scale=3.0, shift=0.0, ignore=(), ignore_index=IGNORE, weight=False):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn((n_rows, n), generator=gen, dtype=torch.float64) * scale + shift).to(dtype)
    t = torch.randint(0, n, (n_rows,), generator=gen)
    t[1 % n_rows], t[2 % n_rows] = n - 1, 0  # the last class (in the masked tail) and the first
    if n > 128:
        t[3 % n_rows] = 128  # the first element of the second chunk
    for i in ignore:  # like the rows above: modulo the batch (a batch of 3 ignores its row 2)
        t[i % n_rows] = ignore_index
    w = (torch.rand(n, generator=gen, dtype=torch.float64) + 0.5).float().to(DEV) if weight else None
    return x.to(DEV), t.to(DEV), w


def reference(x, t, w=None, eps=0.0, zc=0.0, cap=None, ignore_index=IGNORE, s=None):
    """Float64 results and gradient; s = (s_ce, s_z), default: the mean reduction's."""
    x64 = x.detach().to("cpu", torch.float64).requires_grad_()
    t = t.to("cpu", torch.int64)
    w64 = w.to("cpu", torch.float64) if w is not None else None
    xc = cap * torch.tanh(x64 / cap) if cap else x64
    ce = F.cross_entropy(xc, t, weight=w64, ignore_index=ignore_index, label_smoothing=eps, reduction="none")
    lse = torch.logsumexp(xc, -1)
    # z's gradient 2 zc lse p_j, with p from log_softmax: logsumexp's own backward, exp(x - lse),
    # loses p on rows of huge values (3e38 + log C rounds to 3e38 even in float64). The value
    # stays logsumexp's: the added term is 0 (nan_to_num where the row is not finite).
    j = xc.detach().nan_to_num(0.0).argmax(-1, keepdim=True)
    via = (xc.gather(1, j) - F.log_softmax(xc, -1).gather(1, j)).squeeze(1)
    lse_g = lse.detach() + torch.nan_to_num(via - via.detach(), 0.0, 0.0, 0.0)
    keep = t != ignore_index
    z = torch.where(keep, zc * lse_g * lse_g, 0.0) if zc else torch.zeros_like(lse)  # off: 0, not 0 * inf
    wt = torch.where(keep, w64[t.clamp(0)] if w64 is not None else torch.ones_like(lse), 0.0)
    if s is None:
        s = (1.0 / wt.sum().item(), 1.0 / keep.sum().item())
    (ce.sum() * s[0] + z.sum() * s[1]).backward()
    return dict(ce=ce.detach(), z=z.detach(), lse=lse.detach(), grad=x64.grad, xc=xc.detach(), wt=wt.detach(),
                keep=keep, s=s, x=x64.detach(), w=w64, t=t)  # fmt: skip


def scale_of(ref):
    return torch.tensor(ref["s"], dtype=torch.float32, device=DEV)


def u_out(dtype) -> float:
    if dtype == torch.float32:
        return 0.0
    return torch.finfo(dtype).eps / 2 * (2.0 if INTERPRET and dtype == torch.bfloat16 else 1.0)


def tiny_out(dtype) -> float:
    fi = torch.finfo(dtype)
    return 2.0 * torch.finfo(torch.float32).tiny + (0.0 if dtype == torch.float32 else fi.tiny * fi.eps)


def assert_close(what, y, ref, bound):
    """Same NaN pattern; the same infinities where the reference overflows float32; finite
    values within the bound (elementwise)."""
    y = y.to("cpu", torch.float64)
    assert y.shape == ref.shape, (what, y.shape, ref.shape)
    nan = torch.isnan(ref)
    where = torch.nonzero(torch.isnan(y) != nan)[:5].tolist()
    assert torch.equal(torch.isnan(y), nan), f"{what}: NaN pattern differs at {where}"
    refc = ref.float().double()
    inf = torch.isinf(refc)
    assert torch.equal(y[inf], refc[inf]), f"{what}: infinities differ at {torch.nonzero(inf)[:5].tolist()}"
    fin = ~nan & ~inf
    err = (y - ref).abs()
    bad = fin & ~(err <= bound)
    if bad.any():
        i = tuple(torch.nonzero(bad)[0].tolist())
        raise AssertionError(
            f"{what}: {int(bad.sum())} out of bound; first at {i}: y={y[i].item()!r} ref={ref[i].item()!r} "
            f"err={err[i].item():.3g} bound={bound[i].item():.3g}"
        )


def check(out, grad, ref, *, eps=0.0, zc=0.0, cap=None, dtype=torch.float32):
    ce, z, lse = out
    xc, lr, n = ref["xc"], ref["lse"], ref["xc"].shape[1]
    c = cap or 0.0
    with torch.no_grad():
        dev = (xc - lr[:, None]).abs()
        mag = torch.where(torch.isfinite(dev), dev, 0.0).amax(1) + 1 + c
        W = ref["w"].sum() if ref["w"] is not None else float(n)
        coef = (1 - eps) * ref["wt"] + eps / n * W
        keep = ref["keep"]
        b_ce = torch.where(keep, 32 * U * coef * mag, 0.0)
        lr_f = torch.where(torch.isfinite(lr), lr.abs(), 0.0)
        b_lse = 32 * U * (mag + lr_f)
        b_z = torch.where(keep, 2 * zc * lr_f * b_lse + 32 * U * ref["z"].abs().nan_to_num(0.0, 0.0), 0.0)
        assert_close("ce", ce, ref["ce"], b_ce)
        assert_close("lse", lse, lr, b_lse)
        assert_close("z", z, ref["z"], b_z)
        if grad is None:
            return
        s_ce, s_z = ref["s"]
        p = torch.exp(xc - lr[:, None])
        A = s_ce * coef + s_z * 2 * zc * lr
        B = s_ce * eps / n * (ref["w"] if ref["w"] is not None else torch.ones(n, dtype=torch.float64))
        T = s_ce * (1 - eps) * ref["wt"]
        onehot = torch.zeros_like(xc)
        rows = torch.nonzero(keep).flatten()
        onehot[rows, ref["t"][rows]] = 1.0
        cond = 1 + torch.where(torch.isfinite(dev), dev, 0.0) + c + (2 * ref["x"].abs() / cap if cap else 0.0)
        sc = A.abs()[:, None] * p * cond + B.abs()[None, :] + onehot * T.abs()[:, None]
        r = ref["grad"]
        b = 32 * U * sc + u_out(dtype) * r.abs() + tiny_out(dtype)
        b = torch.where(keep[:, None], b, 0.0)  # ignored rows: exactly 0
        assert_close("grad", grad, r, b)


def run(x, t, w, ref, cfg, *, eps=0.0, zc=0.0, cap=None, grad="new", ignore_index=IGNORE):
    g = None if grad is None else (x if grad == "inplace" else torch.full_like(x, float("nan")))
    out = K.cross_entropy_forward(
        x, t, w, scale_of(ref), ignore_index=ignore_index, label_smoothing=eps, z_loss=zc, softcap=cap,
        grad=g, cfg=cfg,
    )  # fmt: skip
    return out, g


# ----------------------------------------------------------------------------------
# Against the reference: options x dtypes x modes, with the gradient.
# ----------------------------------------------------------------------------------
OPTIONS = {
    "plain": dict(),
    "smooth-weight": dict(eps=0.1, weight=True),
    "zloss": dict(zc=1e-2),
    "softcap": dict(cap=5.0),  # |x| / c up to ~2.5: both branches of _tanh
    "shifted": dict(eps=0.3, shift=1e4),  # a large common offset: the smoothing sum must not cancel
    "all": dict(eps=0.2, weight=True, zc=1e-3, cap=4.0, ignore=(5,), ignore_index=7),
}
CASES = [(o, torch.float32, m) for o in OPTIONS for m in MODES] + [
    ("plain", torch.bfloat16, "split"),
    ("plain", torch.float16, "row"),
    ("all", torch.bfloat16, "row"),
    ("all", torch.float16, "split"),
]


@pytest.mark.parametrize("opt,dtype,mode", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_matches_torch(opt, dtype, mode):
    o = OPTIONS[opt]
    kw = dict(eps=o.get("eps", 0.0), zc=o.get("zc", 0.0), cap=o.get("cap"))
    ii = o.get("ignore_index", IGNORE)
    x, t, w = make(8, 299, dtype, shift=o.get("shift", 0.0), ignore=o.get("ignore", ()), ignore_index=ii,
                   weight=o.get("weight", False))  # fmt: skip
    ref = reference(x, t, w, ignore_index=ii, **kw)
    ran, (out, g) = traced(lambda: run(x, t, w, ref, MODES[mode], ignore_index=ii, **kw))
    assert ran == ["ce_" + mode]
    check(out, g, ref, dtype=dtype, **kw)


@pytest.mark.parametrize("mode", MODES)
def test_forward_only(mode):
    """grad=None: one pass, the same ce, z and lse (bitwise) as with the gradient."""
    kw = dict(eps=0.2, zc=1e-3, cap=4.0)
    x, t, w = make(8, 299, torch.float32, ignore=(5,), weight=True)
    ref = reference(x, t, w, **kw)
    out, _ = run(x, t, w, ref, MODES[mode], grad=None, **kw)
    check(out, None, ref, **kw)
    out_g, _ = run(x, t, w, ref, MODES[mode], **kw)
    for a, b in zip(out, out_g):
        assert torch.equal(a, b)


def test_auto_mode():
    """Default choice: forward-only in row mode; forward of a few long rows split (parallelism);
    with a gradient, split (a bounded distance between a row's two reads)."""
    cfg = dict(SMALL)
    x, t, _ = make(8, 299, torch.float32)
    ref = reference(x, t)
    assert traced(lambda: run(x, t, None, ref, cfg, grad=None))[0] == ["ce_row"]
    x3, t3, _ = make(3, 1000, torch.float32, seed=1)  # 3 rows < 4 programs x 2 SMs, 1000 >= 2 chunks
    ref3 = reference(x3, t3)
    ran, (out, _) = traced(lambda: run(x3, t3, None, ref3, cfg, grad=None))
    assert ran == ["ce_split"]
    check(out, None, ref3)
    assert traced(lambda: K._plan(8, 299, 4, True, K._config(cfg), x, 4))[1]["split"]


# ----------------------------------------------------------------------------------
# Special values, ignored rows, targets out of range.
# ----------------------------------------------------------------------------------
def special_inputs(n):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((12, n), generator=gen, dtype=torch.float64) * 3
    t = torch.randint(0, n, (12,), generator=gen)
    x[1, 7] = float("nan")
    x[2, n - 1] = float("inf")
    x[3, :] = float("-inf")
    t[4] = 3
    x[4, 3] = float("-inf")  # -inf at the target of a finite row: ce +inf
    t[5] = 1
    x[5, ::5] = float("-inf")  # -inf elsewhere: contributes nothing (eps = 0), else ce +inf
    x[6, :] = 3e38  # huge and equal: ce = log n
    t[7] = 2
    x[7, :], x[7, 2] = -FMAX, FMAX  # the target holds all the mass: ce = 0, gradient 0
    x[8, 9] = float("nan")
    t[8] = IGNORE  # ignored: 0 and a zero gradient even with a NaN
    t[9] = n  # out of range: NaN
    t[10] = -5
    x[11, 0], x[11, 5] = float("nan"), float("inf")
    return x.float().to(DEV), t.to(DEV)


SPECIAL_CASES = [("row", 0.0, None), ("split", 0.1, None), ("split", 0.0, 5.0), ("row", 0.1, 5.0)]


@pytest.mark.parametrize("mode,eps,cap", SPECIAL_CASES)
def test_special_values(mode, eps, cap):
    n = 150  # two tiles, two chunks
    x, t = special_inputs(n)
    zc = 1e-3 if eps else 0.0
    t_ref = torch.where((t == n) | (t == -5), 0, t)  # torch refuses out-of-range targets
    ref = reference(x, t_ref, eps=eps, zc=zc, cap=cap, s=(1.0, 1.0))
    # What docs/cross_entropy.md defines where torch differs or refuses:
    ref["ce"][[9, 10]] = float("nan")  # target out of range: loss and gradient NaN
    ref["grad"][[9, 10]] = float("nan")
    ref["keep"][[9, 10]] = True
    ref["grad"][8] = 0.0  # ignored rows: a zero gradient (torch: NaN from the NaN logit)
    if eps and not cap:
        ref["ce"][7] = float("inf")  # x' - max = -2 FLT_MAX overflows float32 (torch float32: inf too)
    out, g = run(x, t, None, ref, MODES[mode], eps=eps, zc=zc, cap=cap)
    check(out, g, ref, eps=eps, zc=zc, cap=cap)
    ce, z, lse = (v.cpu().double() for v in out)
    gd = g.cpu().double()
    nan_rows = [1, 9, 10, 11] + ([] if cap else [2])  # soft-capped, +inf is c: a finite row
    assert torch.isnan(ce[nan_rows]).all() and torch.isnan(gd[nan_rows]).all()
    assert ce[8] == 0 and z[8] == 0 and (gd[8] == 0).all()
    if not cap:
        assert torch.isnan(ce[3]) and torch.isnan(gd[3]).all() and lse[3] == float("-inf")
        assert lse[2] == float("inf") and ce[4] == float("inf") and torch.isfinite(gd[4]).all()
        assert ce[5] == float("inf") if eps else math.isfinite(ce[5])
        assert abs(ce[6] - math.log(n)) < 1e-5 and abs(lse[6] / 3e38 - 1) < 1e-6
        if not eps:
            assert ce[7] == 0 and (gd[7] == 0).all()


def test_all_rows_ignored():
    """The mean's 1/0 scales reach the kernel as inf: the loss rows and the gradient stay 0."""
    x, t, _ = make(8, 299, torch.float32, ignore=range(8))
    ref = reference(x, t, eps=0.1, zc=1e-3, s=(1.0, 1.0))
    inf = torch.tensor([float("inf")] * 2, device=DEV)
    for cfg in MODES.values():
        g = torch.full_like(x, float("nan"))
        ce, z, lse = K.cross_entropy_forward(x, t, None, inf, label_smoothing=0.1, z_loss=1e-3, grad=g, cfg=cfg)
        assert (ce == 0).all() and (z == 0).all() and (g == 0).all()
        assert_close("lse", lse, ref["lse"], 32 * U * (ref["lse"].abs() + 10))


# ----------------------------------------------------------------------------------
# In place, determinism, layouts.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_in_place_and_deterministic(mode):
    """grad=logits gives bitwise the result of a separate buffer; two runs are bitwise equal."""
    kw = dict(eps=0.1, zc=1e-3)
    x, t, w = make(8, 299, torch.bfloat16, ignore=(4,), weight=True)
    ref = reference(x, t, w, **kw)
    out1, g1 = run(x, t, w, ref, MODES[mode], **kw)
    out2, g2 = run(x, t, w, ref, MODES[mode], **kw)
    xi = x.clone()
    out3, g3 = run(xi, t, w, ref, MODES[mode], grad="inplace", **kw)
    assert g3 is xi
    for a, b, c in zip(out1 + (g1,), out2 + (g2,), out3 + (g3,)):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_strided_rows_int32_target():
    """Row strides other than C (views of wider buffers, different for logits and grad), an
    unaligned start, int32 targets."""
    n = 299
    x0, t, _ = make(8, n, torch.float32, seed=4)
    big = torch.full((8, n + 13), float("nan"), device=DEV)
    big[:, 5 : 5 + n] = x0
    x = big[:, 5 : 5 + n]
    gbig = torch.full((8, n + 40), 7.0, device=DEV)
    g = gbig[:, 1 : 1 + n]
    ref = reference(x, t)
    out = K.cross_entropy_forward(x, t.to(torch.int32), None, scale_of(ref), grad=g, cfg=MODES["split"])
    check(out, g, ref)
    assert (gbig[:, :1] == 7).all() and (gbig[:, 1 + n :] == 7).all()  # nothing outside the view


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_rows_on_the_aligned_grid(mode, dtype):
    """Odd C and a row stride of C + 3: the rows start at every offset from a 16-byte
    boundary, and the kernel reads them as whole vectors from the boundary below (VEC elements
    each). The gaps between rows hold NaN in the logits (a neighbour's element leaking into a
    row would make its loss NaN) and a sentinel in the gradient (no store outside a row)."""
    n = 299
    x0, t, _ = make(8, n, dtype, seed=5)
    xbig = torch.full((8, n + 3), float("nan"), dtype=dtype, device=DEV)
    xbig[:, :n] = x0
    x = xbig[:, :n]
    gbig = torch.full((8, n + 3), 7.0, dtype=dtype, device=DEV)
    g = gbig[:, :n]
    ref = reference(x, t, eps=0.1)
    LAUNCH = load("_launch")
    LAUNCH._TRACE = []
    try:
        out = K.cross_entropy_forward(x, t, None, scale_of(ref), label_smoothing=0.1, grad=g, cfg=MODES[mode])
        params = [p for _, p in LAUNCH._TRACE]
    finally:
        LAUNCH._TRACE = None
    assert [p["VEC"] for p in params] == [16 // x.element_size()]
    check(out, g, ref, eps=0.1, dtype=dtype)
    assert (gbig[:, n:] == 7).all()


@pytest.mark.parametrize("mode", MODES)
def test_tiny_rows(mode):
    """C = 1 (loss 0 with eps = 0; a one-element tile and one warp) and C = 2, N = 1."""
    for n_rows, n in ((5, 1), (1, 2)):
        x, t, _ = make(n_rows, n, torch.float32, seed=n)
        ref = reference(x, t, eps=0.1, zc=1e-3)
        out, g = run(x, t, None, ref, MODES[mode], eps=0.1, zc=1e-3)
        check(out, g, ref, eps=0.1, zc=1e-3)


def test_errors():
    x = torch.zeros((4, 10), device=DEV)
    t = torch.zeros(4, dtype=torch.int64, device=DEV)
    s = torch.ones(2, device=DEV)
    fwd = K.cross_entropy_forward
    with pytest.raises(TypeError, match="float64"):
        fwd(x.double(), t, None, s)
    with pytest.raises(ValueError, match="class stride"):
        fwd(torch.zeros((10, 4), device=DEV).t(), t, None, s)
    with pytest.raises(ValueError, match="target"):
        fwd(x, t.float(), None, s)
    with pytest.raises(ValueError, match="weight"):
        fwd(x, t, torch.ones(9, device=DEV), s)
    with pytest.raises(ValueError, match="scale"):
        fwd(x, t, None, torch.ones(3, device=DEV))
    with pytest.raises(ValueError, match="grad"):
        fwd(x, t, None, s, grad=torch.zeros((4, 10), dtype=torch.bfloat16, device=DEV))
    with pytest.raises(ValueError, match="label_smoothing"):
        fwd(x, t, None, s, label_smoothing=1.5)
    with pytest.raises(ValueError, match="softcap"):
        fwd(x, t, None, s, softcap=0.0)
    with pytest.raises(ValueError, match="unknown config"):
        fwd(x, t, None, s, cfg={"nope": 1})
    with pytest.raises(ValueError, match="g must be"):
        K.scale_grad_(x, torch.ones(3, device=DEV))
    ce, z, lse = fwd(torch.zeros((0, 10), device=DEV), t[:0], None, s)
    assert ce.shape == z.shape == lse.shape == (0,)


# ----------------------------------------------------------------------------------
# scale_grad_.
# ----------------------------------------------------------------------------------
SCALE_CFG = dict(scale_block=128, scale_programs_per_sm=1, num_sms=2)  # 3 tiles a row, 2 programs for 8 rows


def test_scale_grad_scalar():
    x, _, _ = make(8, 299, torch.bfloat16)
    x[2, 3] = float("nan")
    bits = x.view(torch.int16).clone()
    for g in (torch.tensor(1.0, device=DEV), torch.tensor(1.0, dtype=torch.bfloat16, device=DEV)):
        ran, y = traced(lambda g=g: K.scale_grad_(x, g, cfg=SCALE_CFG))
        assert ran == ["scale"] and y is x
        assert torch.equal(x.view(torch.int16), bits)  # g == 1: untouched, bit for bit
    ref = x.float() * 0.5
    K.scale_grad_(x, torch.tensor(0.5, device=DEV), cfg=SCALE_CFG)
    assert torch.equal(x.float().nan_to_num(7.0), ref.nan_to_num(7.0))  # halving is exact
    xf, _, _ = make(4, 50, torch.float32)
    K.scale_grad_(xf, torch.tensor(float("nan"), device=DEV), cfg=SCALE_CFG)
    assert torch.isnan(xf).all()


def test_scale_grad_per_row():
    x, _, _ = make(8, 299, torch.float32)
    g = torch.tensor([1.0, 0.5, 2.0, -1.0, 1.0, 0.3, float("nan"), 3.0], device=DEV)
    ref = x * g[:, None]  # one float32 rounding, as the kernel
    bits = x.view(torch.int32).clone()
    K.scale_grad_(x, g, cfg=SCALE_CFG)
    assert torch.equal(x[[0, 4]].view(torch.int32), bits[[0, 4]])  # rows with g_i == 1: untouched
    keep = ~torch.isnan(g)
    assert torch.equal(x[keep], ref[keep]) and torch.isnan(x[6]).all()


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("g", ["one", "half", "per-row"])
def test_backward_copy_one_pass(g, dtype):
    """The CUDA backward of twopass.torch.cross_entropy (not in place) returns grad * g as a
    new tensor in one Triton pass: that result is its only (N, C) allocation (no float32
    temporaries), the stored gradient is unchanged, and g == 1 still gives a copy."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ce_mod = pytest.importorskip("twopass.torch._cross_entropy")
    x, _, _ = make(8, 299, dtype)
    gv = {"one": torch.tensor(1.0), "half": torch.tensor(0.5), "per-row": torch.linspace(-2, 2, 8)}[g].to(DEV)
    before = x.clone()
    big = []

    class CountBig(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(r.alias_info is not None for r in func._schema.returns):
                return out  # a view or an in-place op: no new memory
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and o.numel() >= x.numel():
                    big.append(func._schema.name)
            return out

    with CountBig():
        dx = ce_mod._grad_times(x, gv, True)
    assert big == ["aten::empty_like"], big
    assert torch.equal(x, before)
    want = (x.double() * (gv.double() if gv.dim() == 0 else gv.double()[:, None])).to(dtype)
    torch.testing.assert_close(dx, want, rtol=u_out(dtype) * 2, atol=0)


# ----------------------------------------------------------------------------------
# The soft-cap's tanh and its derivative.
# ----------------------------------------------------------------------------------
_tanh = K._tanh


@triton.jit
def _tanh_probe(Y, TH, D, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    m = i < n
    th, d = _tanh(tl.load(Y + i, mask=m, other=0.0))
    tl.store(TH + i, th, mask=m)
    tl.store(D + i, d, mask=m)


def test_tanh():
    """tanh within 4 ulp (relative) and 1 - tanh^2 within (8 + 2|y|) ulp (exp2's argument is
    2|y| log2(e), rounded), both branches and their boundary, saturation, inf, NaN."""
    y = torch.cat([torch.linspace(-12, 12, 961), torch.tensor([0.55, -0.55, 0.5499999, 1e-30, 0.0, 60.0])])
    y = torch.cat([y, torch.tensor([float("inf"), float("-inf"), float("nan")])]).to(DEV)
    th, d = torch.empty_like(y), torch.empty_like(y)
    _tanh_probe[(1,)](y, th, d, y.numel(), BLOCK=triton.next_power_of_2(y.numel()))
    y64 = y.cpu().double()
    rt = torch.tanh(y64)
    rd = 1 - rt * rt
    rd = torch.where(y64.abs() > 5, 4 * torch.exp(-2 * y64.abs()) / (1 + torch.exp(-2 * y64.abs())) ** 2, rd)
    rd = torch.where(y64.isinf(), 0.0, rd)
    tiny = 2 * torch.finfo(torch.float32).tiny
    assert_close("tanh", th, rt, 4 * U * rt.abs() + tiny)
    assert_close("1 - tanh^2", d, rd, (8 + 2 * y64.abs().nan_to_num(0, 0, 0)) * U * rd + tiny)


# ----------------------------------------------------------------------------------
# CUDA only: the default settings on real shapes.
# ----------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("shape", [(64, 32000), (16, 128256), (3, 256000), (300, 1000)])
@pytest.mark.parametrize("opt", ["plain", "all"])
def test_cuda_default_settings(shape, dtype, opt):
    o = OPTIONS[opt]
    kw = dict(eps=o.get("eps", 0.0), zc=o.get("zc", 0.0), cap=o.get("cap"))
    ii = o.get("ignore_index", IGNORE)
    x, t, w = make(*shape, dtype, ignore=o.get("ignore", ()), ignore_index=ii, weight=o.get("weight", False))
    ref = reference(x, t, w, ignore_index=ii, **kw)
    for grad in (None, "new"):
        out, g = run(x, t, w, ref, None, grad=grad, ignore_index=ii, **kw)
        check(out, g, ref, dtype=dtype, **kw)


@cuda_only
def test_cuda_graph_capture():
    """No host synchronization: the launchers can be captured in a CUDA graph."""
    x, t, _ = make(64, 32000, torch.bfloat16)
    scale = torch.tensor([1 / 64, 1 / 64], device=DEV)
    g_eager = torch.empty_like(x)
    out_eager = K.cross_entropy_forward(x, t, None, scale, grad=g_eager)
    K.scale_grad_(g_eager, torch.tensor(0.5, device=DEV))
    g = torch.empty_like(x)
    half = torch.tensor(0.5, device=DEV)
    K.cross_entropy_forward(x, t, None, scale, grad=g)  # compile outside the capture
    K.scale_grad_(g, half)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = K.cross_entropy_forward(x, t, None, scale, grad=g)
        K.scale_grad_(g, half)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g, g_eager) and all(torch.equal(a, b) for a, b in zip(out, out_eager))


@pytest.mark.skipif(not INTERPRET, reason="the CPU comparison runs under the interpreter")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_wrapper_triton_path_matches_cpu(reduction):
    """twopass.torch's CUDA path (the launchers plus the on-device reduction) gives what
    its CPU path (the C++ kernels) gives, on the same tensors."""
    ce_mod = pytest.importorskip("twopass.torch._cross_entropy")
    x, t = make(9, 77, torch.float32, ignore=(2,), weight=False)[:2]
    w = torch.rand(77) + 0.5
    args = (t, w, IGNORE, reduction, 0.1, 1e-3, 5.0)
    g_cpu, g_tri = torch.empty_like(x), torch.empty_like(x)
    cpu = ce_mod._cpu(x, *args, g_cpu)
    tri = ce_mod._triton(x, *args, g_tri)
    for a, b in zip(cpu, tri):
        torch.testing.assert_close(b.double(), a.double(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(g_tri, g_cpu, rtol=2e-5, atol=2e-7)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy_triton_chunks(reduction, dtype):
    """twopass.torch.linear_cross_entropy's CUDA path: its chunk loop with the Triton kernel
    in place on each chunk (under the interpreter on CPU tensors; on a GPU, the real
    function) gives the loss, lse and gradients of the CPU path (the C++ kernel) on the same
    inputs, the upstream gradient per row for "none"."""
    lce = pytest.importorskip("twopass.torch._linear_cross_entropy")
    ce_mod = pytest.importorskip("twopass.torch._cross_entropy")
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(37, 16, generator=gen).to(dtype)
    w = (torch.randn(300, 16, generator=gen) / 2).to(dtype)
    b = torch.randn(300, generator=gen).to(dtype)
    t = torch.randint(0, 300, (37,), generator=gen)
    t[::6] = IGNORE
    g = torch.rand(37, generator=gen) + 0.5 if reduction == "none" else None
    opts = (IGNORE, reduction, 0.1, 1e-3, 5.0, 16, True)
    cpu = lce._loop(h, w, t, b, *opts, g_rows=g)
    if INTERPRET:
        tri = lce._loop(h, w, t, b, *opts, g_rows=g, ce=ce_mod._triton)
    else:
        tri = lce._loop(*(a.to(DEV) for a in (h, w, t, b)), *opts, g_rows=None if g is None else g.to(DEV))
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for a, c in zip(cpu, tri):
        torch.testing.assert_close(c.cpu().double(), a.double(), **tol)
