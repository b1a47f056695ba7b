"""twopass.torch.linear_cross_entropy and LinearCrossEntropy against an independent float64
reference: torch's F.cross_entropy(F.linear(h, W, b)) on the same (rounded) inputs, plus
soft-capping and the z-loss as docs/cross_entropy.md defines them, and autograd's
gradients of that graph.

Bounds, relative to the largest magnitude of each reference tensor (loss; grad of input,
weight, bias), in units of the dtype's unit roundoff u: float64 and float32 64 u (measured
here: at most 14 u; the matmuls' H- and V-term sums), float16 and bfloat16 16 u (measured:
at most 2.4 u; the logits and their gradient are rounded to the dtype once each, the
matmuls round again, and grad_W is accumulated in the dtype, one rounding per chunk).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
import twopass.torch as tpt  # noqa: E402 - an import error in twopass fails, never skips
from twopass.torch import _linear_cross_entropy as lce_mod  # noqa: E402

IGNORE = -100
U = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
UNITS = {torch.float64: 64, torch.float32: 64, torch.bfloat16: 16, torch.float16: 16}
OPTIONS = {
    "plain": {},
    "smooth_z_cap": dict(label_smoothing=0.1, z_loss=1e-3, softcap=4.0),
    "ignore": dict(ignore_index=3),
}


def make(lead=(3, 29), h=24, v=70, dtype=torch.float32, bias=True, seed=0, ignore=IGNORE):
    """h (*lead, H), W (V, H), b (V,) or None, targets with a few ignored rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, h, generator=g).to(dtype)
    w = (torch.randn(v, h, generator=g) * 2 / h**0.5).to(dtype)
    b = torch.randn(v, generator=g).to(dtype) if bias else None
    t = torch.randint(0, v, lead, generator=g)
    flat = t.view(-1)
    flat[::5] = ignore  # every fifth row
    return x, w, b, t


def reference(x, w, b, t, *, ignore_index=IGNORE, reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None):
    """(loss, lse) of the float64 graph, inputs as float64 leaves (their .grad after backward)."""
    logits = F.linear(x, w, b)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    lg = logits.reshape(-1, logits.shape[-1])
    tt = t.reshape(-1)
    ce = F.cross_entropy(lg, tt, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    lse = torch.logsumexp(lg, -1)
    valid = tt != ignore_index
    rows = ce + torch.where(valid, z_loss * lse * lse, 0)
    if reduction == "none":
        loss = rows.reshape(t.shape)
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows.sum() / valid.sum()
    return loss, lse.reshape(t.shape)


def run_both(x, w, b, t, upstream, **kw):
    """(twopass's loss and grads, the float64 reference's) for the same inputs."""
    leaves = [a.clone().requires_grad_() for a in (x, w, b) if a is not None]
    xs, ws = leaves[0], leaves[1]
    bs = leaves[2] if b is not None else None
    loss = tpt.linear_cross_entropy(xs, ws, t, bs, **kw)
    loss.backward(upstream.to(loss.dtype))
    refs = [a.detach().double().requires_grad_() for a in leaves]
    kw.pop("chunk_size", None)
    rloss, _ = reference(refs[0], refs[1], refs[2] if b is not None else None, t, **kw)
    rloss.backward(upstream.double())
    return [loss, *(a.grad for a in leaves)], [rloss, *(a.grad for a in refs)]


def assert_near(got, ref, dtype, what):
    units = UNITS[dtype]
    scale = ref.abs().max().item() if ref.numel() else 0.0
    err = (got.double() - ref).abs().max().item() if ref.numel() else 0.0
    assert got.dtype == dtype, what
    assert got.shape == ref.shape, what
    assert err <= units * U[dtype] * scale, f"{what}: error {err:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("bias", [False, True])
def test_against_float64_reference(dtype, reduction, opts, bias):
    """Loss and the three gradients, every reduction ("none" with a non-uniform upstream
    gradient), chunks of 16 rows over 87 (the last one short), leading dims (3, 29)."""
    kw = dict(OPTIONS[opts], reduction=reduction, chunk_size=16)
    x, w, b, t = make(dtype=dtype, bias=bias, ignore=kw.get("ignore_index", IGNORE))
    g = torch.Generator().manual_seed(1)
    upstream = torch.rand(t.shape, generator=g) + 0.5 if reduction == "none" else torch.tensor(1.7)
    got, ref = run_both(x, w, b, t, upstream, **kw)
    for name, a, r in zip(("loss", "grad input", "grad weight", "grad bias"), got, ref):
        assert_near(a, r, dtype, f"{dtype} {reduction} {opts}: {name}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(reduction):
    """Finite differences in float64, with every option and a bias."""
    x, w, b, t = make(lead=(7,), h=5, v=9, dtype=torch.float64)
    args = [a.clone().requires_grad_() for a in (x, w, b)]

    def f(x, w, b):
        return tpt.linear_cross_entropy(
            x, w, t, b, reduction=reduction, label_smoothing=0.1, z_loss=1e-2, softcap=3.0, chunk_size=3
        )

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunk_sizes_agree(chunk):
    """Any chunk size, a divisor of the rows or not, one row or all rows at once: the
    same loss, lse and gradients to rounding."""
    x, w, b, t = make(lead=(70,), dtype=torch.float64)
    out = {}
    for c in (chunk, 70):
        leaves = [a.clone().requires_grad_() for a in (x, w, b)]
        loss, lse = tpt.linear_cross_entropy(*leaves[:2], t, leaves[2], chunk_size=c, z_loss=1e-3, return_lse=True)
        loss.backward()
        out[c] = [loss, lse, *(a.grad for a in leaves)]
    for a, r in zip(out[chunk], out[70]):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_one_chunk_buffer_at_a_time(monkeypatch):
    """The per-chunk kernel only ever sees one (chunk, V) buffer, the same storage each
    time: no logits beyond one chunk exist."""
    seen = []
    real = lce_mod._compute

    def spy(x, *args):
        seen.append((x.data_ptr(), tuple(x.shape)))
        return real(x, *args)

    monkeypatch.setattr(lce_mod._loop, "__defaults__", (None, spy))
    x, w, b, t = make(lead=(50,), v=33, dtype=torch.float32)
    x.requires_grad_()
    tpt.linear_cross_entropy(x, w, t, b, chunk_size=16).backward()
    assert [s for _, s in seen] == [(16, 33), (16, 33), (16, 33), (2, 33)]
    assert len({p for p, _ in seen}) == 1


def test_chunk_from_budget(monkeypatch):
    """The default chunk: the rows of logits in TWOPASS_LCE_CHUNK_BYTES (64 MiB unless
    set), rounded down to a multiple of 64 rows (of 8 below 64), at least 1, at most N."""
    name = "t"
    monkeypatch.delenv("TWOPASS_LCE_CHUNK_BYTES", raising=False)
    assert lce_mod._chunk_rows(name, None, 32000, 4, 8192) == 512
    assert lce_mod._chunk_rows(name, None, 32000, 2, 8192) == 1024
    assert lce_mod._chunk_rows(name, None, 128256, 2, 8192) == 256
    assert lce_mod._chunk_rows(name, None, 32000, 4, 100) == 100
    monkeypatch.setenv("TWOPASS_LCE_CHUNK_BYTES", str(20 * 1000 * 4))
    assert lce_mod._chunk_rows(name, None, 1000, 4, 8192) == 16
    monkeypatch.setenv("TWOPASS_LCE_CHUNK_BYTES", "1")
    assert lce_mod._chunk_rows(name, None, 1000, 4, 8192) == 1
    assert lce_mod._chunk_rows(name, 5, 1000, 4, 8192) == 5  # chunk_size wins
    # and the results follow it
    x, w, b, t = make(lead=(40,), dtype=torch.float64)
    monkeypatch.setenv("TWOPASS_LCE_CHUNK_BYTES", str(8 * 70 * 8))
    a = tpt.linear_cross_entropy(x, w, t, b, reduction="none")
    torch.testing.assert_close(a, reference(x, w, b, t, reduction="none")[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_deterministic(reduction):
    """The same gradients, bitwise, from run to run (fixed chunk order, no atomics)."""
    x, w, b, t = make(lead=(300,), h=64, v=500, dtype=torch.float32)
    grads = []
    for _ in range(3):
        leaves = [a.clone().requires_grad_() for a in (x, w, b)]
        loss = tpt.linear_cross_entropy(*leaves[:2], t, leaves[2], reduction=reduction, chunk_size=64)
        loss.backward(torch.ones_like(loss))
        grads.append([loss.detach(), *(a.grad for a in leaves)])
    for other in grads[1:]:
        assert all(torch.equal(a, r) for a, r in zip(other, grads[0]))


def test_lse_no_grad_and_partial_grads():
    """return_lse gives logsumexp of the soft-capped logits; under no_grad nothing is
    stored; gradients only for the leaves that ask (a frozen weight, a bias-free head)."""
    x, w, b, t = make(lead=(2, 11), dtype=torch.float64)
    with torch.no_grad():
        loss, lse = tpt.linear_cross_entropy(x, w, t, b, softcap=2.0, return_lse=True)
    rloss, rlse = reference(x, w, b, t, softcap=2.0)
    torch.testing.assert_close(loss, rloss)
    torch.testing.assert_close(lse, rlse)
    assert not lse.requires_grad
    xs = x.clone().requires_grad_()
    tpt.linear_cross_entropy(xs, w, t).backward()
    xr = x.clone().requires_grad_()
    reference(xr, w, None, t)[0].backward()
    torch.testing.assert_close(xs.grad, xr.grad)
    assert w.grad is None


def test_retain_graph_and_all_ignored():
    """A graph run backward twice accumulates twice the gradient; a batch whose rows are
    all ignored gives a NaN mean loss (0/0) and zero gradients, as torch."""
    x, w, b, t = make(lead=(9,), dtype=torch.float64)
    ws = w.clone().requires_grad_()
    loss = tpt.linear_cross_entropy(x, ws, t)
    loss.backward(retain_graph=True)
    first = ws.grad.clone()
    loss.backward()
    torch.testing.assert_close(ws.grad, 2 * first)
    ws.grad = None
    loss = tpt.linear_cross_entropy(x, ws, torch.full_like(t, IGNORE))
    loss.backward()
    assert torch.isnan(loss)
    assert torch.equal(ws.grad, torch.zeros_like(ws))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_rows(reduction):
    """No tokens: torch's values (mean 0/0 = NaN, sum 0, "none" empty) and zero gradients."""
    x, w, b, t = make(lead=(0,), dtype=torch.float64)
    ws = w.clone().requires_grad_()
    loss = tpt.linear_cross_entropy(x, ws, t, b, reduction=reduction)
    ref, _ = reference(x, w, b, t, reduction=reduction)
    torch.testing.assert_close(loss, ref, equal_nan=True)
    loss.sum().backward()
    assert torch.equal(ws.grad, torch.zeros_like(w))


def test_module():
    """LinearCrossEntropy holds the head's parameters and gives the function's result."""
    torch.manual_seed(0)
    m = tpt.LinearCrossEntropy(12, 40, bias=True, label_smoothing=0.1, reduction="sum", dtype=torch.float64)
    assert m.weight.shape == (40, 12) and m.bias.shape == (40,)
    assert {n for n, _ in m.named_parameters()} == {"weight", "bias"}
    assert "num_classes=40" in repr(m)
    x = torch.randn(5, 12, dtype=torch.float64)
    t = torch.randint(0, 40, (5,))
    loss = m(x, t)
    loss.backward()
    w, b = m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_()
    rloss, _ = reference(x, w, b, t, label_smoothing=0.1, reduction="sum")
    rloss.backward()
    torch.testing.assert_close(loss, rloss)
    torch.testing.assert_close(m.weight.grad, w.grad)
    torch.testing.assert_close(m.bias.grad, b.grad)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph(backend, reduction):
    """No graph break, and eager's loss and gradients."""
    x, w, b, t = make(lead=(2, 9), h=16, v=40)

    def step(x, w, b, t):
        loss = tpt.linear_cross_entropy(x * 1.0, w, t, b, reduction=reduction, z_loss=1e-3, chunk_size=8)
        return loss.sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    eager = [a.clone().requires_grad_() for a in (x, w, b)]
    comp = [a.clone().requires_grad_() for a in (x, w, b)]
    la, lb = step(*eager, t), compiled(*comp, t)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    for a, c in zip(eager, comp):
        torch.testing.assert_close(a.grad, c.grad)


def test_errors():
    x, w, b, t = make(lead=(4,))
    f = tpt.linear_cross_entropy
    with pytest.raises(ValueError, match="weight"):
        f(x, w[:, :-1], t)
    with pytest.raises(ValueError, match="target"):
        f(x, w, t[:-1])
    with pytest.raises(ValueError, match="bias"):
        f(x, w, t, b[:-1])
    with pytest.raises(ValueError, match="dtype"):
        f(x, w.double(), t)
    with pytest.raises(ValueError, match="chunk_size"):
        f(x, w, t, chunk_size=0)
    for bad in (t.float(), t > 0):  # not class indices
        with pytest.raises(ValueError, match="integer targets"):
            f(x, w, bad)
    with pytest.raises(ValueError, match="reduction"):
        f(x, w, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        f(x, w, t, label_smoothing=2.0)
    with pytest.raises(ValueError):  # a class outside [0, V) on the CPU
        f(x, w, torch.full_like(t, w.shape[0]))
