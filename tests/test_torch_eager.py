"""The eager CPU path of twopass.torch (src/twopass/torch/_eager.py) against the custom
ops it bypasses (identical values), torch, and the float64 reference: forward,
gradients (the fused backward kernels of csrc/kernels/softmax_backward.cpp), layouts,
special values, lengths around the SIMD widths, and when the path must not be taken.

Lengths: 1, and 15/16/17, 63/64/65 around AVX-512's float32 vector and 4-register
step (16, 64 floats; float64 and AVX2 have 8 and 4 lanes: 7/8/9 are in the list too);
1000 and 4099 have tails of every width; 5000 rows of floats cross the block in which
row sums fold into double (16 steps of 64).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import twopass  # noqa: E402
import twopass.torch as tpt  # noqa: E402 - an import error in twopass fails, never skips
from twopass import reference  # noqa: E402
from twopass.torch import _eager  # noqa: E402

F = torch.nn.functional
LENGTHS = (1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099, 5000)
DTYPES = (torch.float32, torch.float64)
# max |y - ref| / max|ref| per row family, float32 and float64 (a few ulp of the largest entry)
TOL = {torch.float32: 4e-7 * 8, torch.float64: 1e-15 * 8}


def ops_path(name, x, dim):
    """The custom op, which the eager path bypasses."""
    op = torch.ops.twopass
    if name == "logsumexp":
        return op.logsumexp(x, dim, False)
    return op.softmax(x, dim, name == "log_softmax")


def eager(name, x, dim):
    return getattr(tpt, name)(x, dim)


def ref(name, x, dim):
    a = x.detach().double().numpy()
    return torch.from_numpy(np.asarray(getattr(reference, name)(a, dim), dtype=np.float64))


def same(a, b):
    """Bitwise equal, NaN in the same places."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def close(y, r, dtype):
    y = y.double()
    fin = torch.isfinite(r)
    assert torch.equal(torch.isnan(y), torch.isnan(r))
    assert torch.equal(y[~fin & ~torch.isnan(r)], r[~fin & ~torch.isnan(r)])
    if fin.any():
        scale = r[fin].abs().max().clamp_min(1e-300)
        assert float((y[fin] - r[fin]).abs().max() / scale) <= TOL[dtype]


def make(shape, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
def test_forward_same_as_op_and_close_to_reference(name, n, dtype):
    x = make((3, n), dtype, seed=n)
    assert _eager.eager_ok(x)
    y = eager(name, x, -1)
    assert same(y, ops_path(name, x, -1))
    close(y, ref(name, x, -1), dtype)


@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
@pytest.mark.parametrize(
    "layout", ("dim0", "dim1_of_3d", "transposed", "row_slice", "col_step", "misaligned", "expanded")
)
def test_layouts(name, layout):
    base = make((6, 70, 5), torch.float32, seed=1)
    x, dim = {
        "dim0": (base[:, :, 0], 0),
        "dim1_of_3d": (base, 1),
        "transposed": (base[:, :, 0].t(), -1),
        "row_slice": (base[:, :33, 1], -1),  # rows of 33 at a stride of 350
        "col_step": (base[:, ::2, 0], -1),
        "misaligned": (base.reshape(-1)[1:2071].reshape(30, 69), -1),  # 4 bytes off a vector boundary
        "expanded": (base[:1, :, 0].expand(4, 70), -1),
    }[layout]
    y = eager(name, x, dim)
    assert same(y, ops_path(name, x, dim))
    close(y, ref(name, x, dim), torch.float32)
    if name != "logsumexp":  # torch.empty_like(x)'s strides, as the op's fake function promises
        assert y.stride() == torch.empty_like(x).stride()


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype):
    inf, nan = math.inf, math.nan
    x = torch.tensor(
        [[1.0, nan, 2.0, 0.0], [1.0, inf, 2.0, 0.0], [-inf] * 4, [0.0, -inf, 3e38, -3e38], [1e-40, -1e-40, 0.0, 5.0]],
        dtype=dtype,
    )
    for name, tfn in (("softmax", torch.softmax), ("log_softmax", torch.log_softmax), ("logsumexp", torch.logsumexp)):
        y = eager(name, x, -1)
        assert same(y, ops_path(name, x, -1))
        torch.testing.assert_close(y, tfn(x, -1), equal_nan=True)


@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
def test_empty_and_scalar(name):
    for shape in ((3, 0), (0, 5), (0,)):
        x = torch.empty(shape)
        y = eager(name, x, -1)
        r = getattr(torch, name)(x, -1)
        assert y.shape == r.shape and torch.equal(y, r)
    x = torch.tensor(2.0)  # 0-d: the custom op's path
    torch.testing.assert_close(eager(name, x, 0), getattr(torch, name)(x, 0))


@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
def test_dim_errors(name):
    with pytest.raises(IndexError):
        eager(name, torch.zeros(2, 3), 2)
    with pytest.raises(IndexError):
        eager(name, torch.zeros(2, 3), -3)


@pytest.mark.parametrize("dtype", (torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64), ids=str)
def test_other_dtypes(dtype):
    """Integers and bool: logsumexp as torch's (in the default float dtype); softmax,
    log_softmax and cross_entropy refuse them (torch has no kernel for them either)
    rather than read their bits as floats."""
    x = (torch.arange(15).reshape(3, 5) % 4).to(dtype)
    if dtype.is_complex:
        with pytest.raises(TypeError):
            tpt.logsumexp(x, -1)
    else:
        y = tpt.logsumexp(x, -1)
        r = torch.logsumexp(x, -1)
        assert y.dtype == r.dtype == torch.get_default_dtype()
        torch.testing.assert_close(y, r)
    for fn in (tpt.softmax, tpt.log_softmax):
        with pytest.raises(TypeError, match="unsupported dtype"):
            fn(x, -1)
    with pytest.raises(TypeError, match="unsupported logits dtype"):
        tpt.cross_entropy(x, torch.tensor([0, 1, 2]))


@pytest.mark.filterwarnings("ignore::UserWarning")  # (nested tensors are a prototype)
@pytest.mark.parametrize("kind", ("nested", "sparse_coo", "sparse_csr"))
def test_non_strided_tensors_refused(kind):
    """Sparse and nested tensors get a TypeError naming the op and the layout, from the
    C++ fast path and the Python path alike (a nested tensor is 'strided' but has no
    shape: it raised torch's internal "doesn't support sizes" error), with or without a
    gradient; a strided target with them too."""
    dense = torch.randn(4, 5)
    if kind == "nested":
        x = torch.nested.nested_tensor([torch.randn(5), torch.randn(3)])
    else:
        x = dense.to_sparse() if kind == "sparse_coo" else dense.to_sparse_csr()
    t = torch.tensor([0, 1, 2, 3])
    for grad in (False, True):
        xg = x.detach().requires_grad_(grad)
        for fn in (tpt.softmax, tpt.log_softmax, tpt.logsumexp):
            with pytest.raises(TypeError, match=f"{fn.__name__}: {kind} tensors are not supported"):
                fn(xg, -1)
        with pytest.raises(TypeError, match=f"cross_entropy: {kind} tensors are not supported"):
            tpt.cross_entropy(xg, t[: x.size(0)])
    nested_t = torch.nested.nested_tensor([torch.tensor([0, 1]), torch.tensor([2, 3])])
    with pytest.raises(TypeError, match="cross_entropy: nested tensors are not supported"):
        tpt.cross_entropy(dense, nested_t)


def test_cross_entropy_target_errors():
    x = torch.zeros(5, 40)
    for t in (torch.zeros(4, dtype=torch.int64), torch.zeros(5, 1, dtype=torch.int64), torch.tensor(0)):
        with pytest.raises(ValueError, match="target has shape"):
            tpt.cross_entropy(x, t)
    # float and bool targets are not class indices (they were cast to them: 0.7 -> 0)
    for t in (torch.tensor([0.7, 1, 2, 3, 4]), torch.ones(5, dtype=torch.bool)):
        for inplace in (False, True):
            with pytest.raises(TypeError, match="integer class indices"):
                tpt.cross_entropy(x.clone().requires_grad_(inplace), t, inplace_backward=inplace)
    # other integer dtypes are indices as int64 ones are
    t = torch.tensor([0, 39, 7, 1, 3])
    for dtype in (torch.int32, torch.uint8, torch.int16):
        torch.testing.assert_close(tpt.cross_entropy(x, t.to(dtype)), tpt.cross_entropy(x, t))


def _grads(fn, x, dim, g):
    a = x.detach().clone().requires_grad_()
    y = fn(a, dim)
    (d,) = torch.autograd.grad(y, a, g)
    return y, d


def _ref_grad(name, x, dim, g):
    b = x.detach().double().requires_grad_()
    (d,) = torch.autograd.grad(getattr(torch, name)(b, dim), b, g.double())
    return d


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
def test_backward_kernels(name, n, dtype):
    x = make((4, n), dtype, seed=n)
    gshape = (4,) if name == "logsumexp" else (4, n)
    g = make(gshape, dtype, seed=n + 1)
    y, d = _grads(lambda t, dim: eager(name, t, dim), x, -1, g)
    assert "Function" in type(y.grad_fn).__name__  # the eager autograd.Function, not the op
    y2, d2 = _grads(lambda t, dim: ops_path(name, t, dim), x, -1, g)
    assert same(y, y2) and same(d, d2)
    r = _ref_grad(name, x, -1, g)
    # the gradient's error is relative to |g| |y| per row, not to each entry
    scale = (g.double().abs().max() * (1 if name == "softmax" else 2)).item()
    assert float((d.double() - r).abs().max()) <= TOL[dtype] * max(scale, 1) * (16 if dtype == torch.float32 else 64)


@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
def test_backward_other_layouts(name):
    """dim != -1 (twopass's panels), non-contiguous g or x (torch's backward), keepdim:
    the same values."""
    base = make((5, 40, 3), torch.float64, seed=7)
    for x, dim in ((base[:, :, 0], 0), (base, 1), (base[:, :, 1].t(), -1)):
        y = eager(name, x, dim)
        g = make(y.shape, torch.float64, seed=8)
        g_strided = make(y.shape[::-1], torch.float64, seed=9).t() if y.dim() == 2 else g
        for gg in (g, g_strided):
            _, d = _grads(lambda t, dm: eager(name, t, dm), x, dim, gg)
            r = _ref_grad(name, x, dim, gg)
            torch.testing.assert_close(d, r, rtol=1e-12, atol=1e-14)
    x = make((4, 9), torch.float64).requires_grad_()
    (d,) = torch.autograd.grad(tpt.logsumexp(x, -1, keepdim=True), x, torch.ones(4, 1, dtype=torch.float64))
    torch.testing.assert_close(d, torch.softmax(x.detach(), -1))


# (outer, n, inner): the panel backward's lane tails (inner around the 16-, 32- and
# 64-lane panels of each ISA), axes of 1 to 300 steps, several panels per row block, and
# blocks large enough for two threads.
PANEL_CASES = ((1, 1, 7), (3, 2, 65), (2, 17, 16), (1, 40, 129), (2, 5, 63), (1, 3, 1000), (4, 33, 17), (2, 300, 97))


@pytest.mark.parametrize("dtype", (*DTYPES, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("log", (False, True), ids=("softmax", "log_softmax"))
def test_panel_backward_kernels(monkeypatch, dtype, log):
    """The backward over a non-last dim (panels of columns): the formula computed in
    float64 from the same g and y, within a few ulp (halves: rounded once) of the
    column's scale |g|, on every ISA and on 1 and 2 threads; the autograd path gives the
    kernel's bits."""
    from twopass import _dispatch

    halves = dtype in (torch.float16, torch.bfloat16)
    for outer, n, inner in PANEL_CASES:
        x = make((outer, n, inner), dtype, seed=n * inner)
        g = make((outer, n, inner), dtype, seed=n + inner)
        y = (torch.log_softmax if log else torch.softmax)(x.double(), 1).to(dtype)
        g64, y64 = g.double(), y.double()
        if log:
            want = g64 - torch.exp(y64) * g64.sum(1, keepdim=True)
        else:
            want = y64 * (g64 - (g64 * y64).sum(1, keepdim=True))
        # errors relative to the column's largest |g| or |gx|: its sum's terms and result
        scale = torch.maximum(g64.abs().amax(1, keepdim=True), want.abs().amax(1, keepdim=True)).clamp_min(1e-30)
        tol = HALF_TOL[dtype] if halves else TOL[dtype] * 2
        for isa in _dispatch.isa_supported():
            for threads in (1, 2):
                monkeypatch.setattr(_eager, "_ISA", _dispatch.ISA_CODES[isa])
                monkeypatch.setattr(_eager, "_threads", lambda t=threads: t)
                gx = _eager.softmax_backward(g, y, 1, log)
                err = float(((gx.double() - want).abs() / scale).max())
                assert err <= tol, (isa, threads, (outer, n, inner), err)
        monkeypatch.undo()  # the selected ISA and torch's threads again
        xa = x.detach().clone().requires_grad_()
        (d,) = torch.autograd.grad(eager("log_softmax" if log else "softmax", xa, 1), xa, g)
        ya = eager("log_softmax" if log else "softmax", x, 1)
        assert same(d, _eager.softmax_backward(g, ya, 1, log))


def test_panel_backward_special_values():
    """Over a non-last dim as over the last: NaN in y or g spreads through its column,
    -inf in log_softmax's y gives g, as torch's own backward from the same inputs."""
    inf, nan = math.inf, math.nan
    x = torch.tensor(
        [[0.0, -inf, 1.0, 2.0, 0.5], [1.0, nan, 2.0, 0.0, -inf], [-inf] * 5, [3e38, 3e38, 0.0, -3e38, 1.0]]
    )
    g = torch.tensor(
        [[1.0, 2.0, -1.0, 0.5, inf], [1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 0.0, nan, 1.0, 2.0], [1.0, -1.0, 0.0, 2.0, 1.0]]
    )
    for log in (False, True):
        y = (torch.log_softmax if log else torch.softmax)(x, 0)
        got = _eager.softmax_backward(g, y, 0, log)
        want = (torch._log_softmax_backward_data if log else torch._softmax_backward_data)(g, y, 0, torch.float32)
        torch.testing.assert_close(got, want, equal_nan=True)


def test_backward_special_values():
    inf, nan = math.inf, math.nan
    x = torch.tensor([[0.0, -inf, 1.0, 2.0], [1.0, nan, 2.0, 0.0], [-inf] * 4, [3e38, 3e38, 0.0, -3e38]])
    g = torch.tensor([[1.0, 2.0, -1.0, 0.5], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0], [1.0, -1.0, 0.0, 2.0]])
    for name in ("softmax", "log_softmax"):
        _, d = _grads(getattr(tpt, name), x, -1, g)
        _, r = _grads(getattr(torch, name), x, -1, g)
        torch.testing.assert_close(d, r, equal_nan=True)
    _, d = _grads(lambda t, dim: tpt.logsumexp(t, dim), x, -1, g[:, 0])
    _, r = _grads(lambda t, dim: torch.logsumexp(t, dim), x, -1, g[:, 0])
    torch.testing.assert_close(d, r, equal_nan=True)


def test_gradcheck_and_double_backward_float64():
    x = make((3, 11), torch.float64).requires_grad_()
    for fn in (
        lambda t: tpt.softmax(t, -1),
        lambda t: tpt.log_softmax(t, -1),
        lambda t: tpt.logsumexp(t, -1),
        lambda t: tpt.softmax(t, 0),
    ):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_requires_grad_off_and_no_grad():
    x = make((2, 50), torch.float32)
    assert tpt.softmax(x, -1).grad_fn is None
    xg = x.clone().requires_grad_()
    with torch.no_grad():
        y = tpt.softmax(xg, -1)
    assert y.grad_fn is None and not y.requires_grad
    with torch.inference_mode():
        assert same(tpt.log_softmax(x, -1), ops_path("log_softmax", x, -1))


def test_not_taken_when_tracing_or_transforming():
    x = make((3, 20), torch.float32)
    assert not _eager.eager_ok(x.to("meta"))
    assert not _eager.eager_ok(x.to(torch.int32))  # another dtype (the halves are taken: forward kernels)
    assert not _eager.eager_ok(x.to_sparse())
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        assert not _eager.eager_ok(fx)
        assert tpt.softmax(fx, -1).shape == (3, 20)  # the op's fake function
    # vmap: the custom op under functorch (its own rules), values as torch's
    vm = torch.func.vmap(lambda r: tpt.softmax(r, -1))(x)
    torch.testing.assert_close(vm, torch.softmax(x, -1))
    # a subclass takes the op path
    p = torch.nn.Parameter(x.clone())
    assert _eager.eager_ok(p)


def test_torch_compile_uses_the_op():
    x = make((4, 33), torch.float32, seed=5)

    def f(t):
        return tpt.softmax(t, -1).sum() + tpt.logsumexp(t, -1).sum() + tpt.log_softmax(t, 0).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = f(a), compiled(b)
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_threads_follow_torch():
    x = make((64, 4096), torch.float32, seed=9)
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append((tpt.softmax(x, -1), tpt.logsumexp(x, -1)))
        # logsumexp: rows split between threads, each computed the same way either way
        assert same(outs[0][1], outs[1][1])
        # softmax: auto may pick another algorithm for 2 threads (the cache a core counts
        # on, e.g. on a many-core L3): the same values to rounding, not the same bits
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=4e-7 * 8, atol=0)
    finally:
        torch.set_num_threads(old)


_TEAM_SCRIPT = """
import sys, torch, twopass, twopass.torch as tpt
from twopass.torch import _eager
torch.manual_seed(0)
torch.set_num_threads(2)
out = {"runtime": _eager.OPENMP_RUNTIME, "info": twopass.info()["torch_openmp"]}
for dt in (torch.float32, torch.bfloat16):
    x = torch.randn(64, 4096, dtype=dt) * 4  # 256K elements: split over both threads
    t = torch.randint(0, 4096, (64,))
    xg = x.clone().requires_grad_()
    ce = tpt.cross_entropy(xg, t)
    ce.backward()
    g = torch.randn(64, 4096, dtype=dt)
    a = x.clone().requires_grad_()
    y = tpt.softmax(a, -1)
    (ga,) = torch.autograd.grad(y, a, g)
    out[str(dt)] = [tpt.softmax(x, -1), tpt.log_softmax(x, -1), tpt.logsumexp(x, -1), ce, xg.grad, ga]
torch.save(out, sys.argv[1])
"""


def test_threads_on_torchs_openmp_team(tmp_path):
    """With torch's OpenMP backend, calls on 2 threads run on torch's OpenMP team
    (_eager.OPENMP_RUNTIME; TWOPASS_TORCH_OPENMP=0 keeps twopass's pool): every op,
    forward and backward, gives the same bits either way (the same split of the work)."""
    import os
    import subprocess
    import sys

    results = {}
    for team in ("1", "0"):
        path = tmp_path / f"team{team}.pt"
        env = dict(os.environ, TWOPASS_TORCH_OPENMP=team)
        subprocess.run([sys.executable, "-c", _TEAM_SCRIPT, str(path)], check=True, env=env, timeout=300)
        results[team] = torch.load(path)
    openmp = "OpenMP" in torch.__config__.parallel_info()
    assert (results["1"]["runtime"] is not None) == openmp
    assert results["0"]["runtime"] is None
    assert all(r["info"] == r["runtime"] for r in results.values())
    for key in ("torch.float32", "torch.bfloat16"):
        for a, b in zip(results["1"][key], results["0"][key]):
            assert same(a, b)


_FORK_SCRIPT = """
import os, torch, twopass.torch as tpt
torch.set_num_threads(2)
x = torch.randn(256, 4096)
for _ in range(3):
    y = tpt.softmax(x, -1)
    torch.softmax(x, -1)  # torch's OpenMP team, used before the fork
pid = os.fork()
if pid == 0:
    # (no torch op here: they would wait for the team too; NumPy compares)
    ok = (tpt.softmax(x, -1).numpy() == y.numpy()).all() and tpt.logsumexp(x, -1).shape == (256,)
    os._exit(0 if ok else 3)
print(os.waitpid(pid, 0)[1])
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork()")
def test_forked_child_takes_the_pool():
    """A forked child has none of the parent's OpenMP threads (GNU's runtime waits for
    them forever: torch's own ops hang there): twopass.torch takes its pool, the same bits."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


# ----------------------------------------------------------------------------------
# cross_entropy
# ----------------------------------------------------------------------------------
CE_OPTS = (
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.1},
    {"weight": True},
    {"ignore_index": 3},
    {"z_loss": 1e-3, "softcap": 10.0},
)


def _ce_op(
    x, t, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None, grad=False
):
    # with the gradient, the kernel's softmax takes another algorithm: compare like with like
    loss, z, lse, _ = torch.ops.twopass.cross_entropy(
        x, t, weight, ignore_index, reduction, label_smoothing, z_loss, softcap or 0.0, grad
    )
    return loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", CE_OPTS, ids=lambda o: "-".join(o) or "default")
@pytest.mark.parametrize("n", (1, 17, 1000))
def test_cross_entropy_eager(n, opts, dtype):
    rows = 9
    x = make((rows, n), dtype, seed=n)
    t = torch.randint(0, n, (rows,), generator=torch.Generator().manual_seed(n))
    t[2] = opts.get("ignore_index", -100)
    opts = dict(opts)
    if opts.get("weight"):
        opts["weight"] = torch.rand(n, dtype=dtype, generator=torch.Generator().manual_seed(1)) + 0.5
    if "ignore_index" in opts and n <= 3:
        return
    assert _eager.eager_ok(x)
    a = x.clone().requires_grad_()
    loss = tpt.cross_entropy(a, t, **opts)
    assert same(loss.detach(), _ce_op(x, t, **opts, grad=True))
    g = torch.ones_like(loss) if loss.dim() else None
    (d,) = torch.autograd.grad(loss, a, g)
    # against torch in float64 (the extras have their own tests in test_cross_entropy.py)
    if "z_loss" not in opts:
        b = x.detach().clone().double().requires_grad_()
        w = opts.get("weight")
        ropts = {**opts, "weight": None if w is None else w.double()}
        rl = F.cross_entropy(b, t, **ropts)
        (rd,) = torch.autograd.grad(rl, b, None if g is None else g.double())
        tol = TOL[dtype] * 64
        torch.testing.assert_close(loss.double(), rl, rtol=tol, atol=tol)
        torch.testing.assert_close(d.double(), rd, rtol=tol, atol=tol)
    # the loss alone, without autograd
    assert same(tpt.cross_entropy(x, t, **opts), _ce_op(x, t, **opts))


def test_cross_entropy_eager_upstream_and_errors():
    x = make((5, 40), torch.float32)
    t = torch.tensor([0, 39, 7, -100, 3])
    a = x.clone().requires_grad_()
    (d,) = torch.autograd.grad(tpt.cross_entropy(a, t) * 3.0, a)
    b = x.clone().requires_grad_()
    (r,) = torch.autograd.grad(F.cross_entropy(b, t) * 3.0, b)
    torch.testing.assert_close(d, r)
    with pytest.raises(ValueError, match="outside"):
        tpt.cross_entropy(x, torch.tensor([0, 40, 1, 2, 3]))
    with pytest.raises(ValueError):
        tpt.cross_entropy(x, t, weight=torch.ones(39))
    # all rows ignored: mean is 0/0 = NaN, as torch
    assert math.isnan(tpt.cross_entropy(x, torch.full((5,), -100)).item())
    # (C,) logits and a 0-d target
    torch.testing.assert_close(tpt.cross_entropy(x[0], t[0]), F.cross_entropy(x[0], t[0]))


# float16/bfloat16: the forward kernels read and write the halves (float32 inside); the
# eager path takes them too, with the algorithm the custom op (and the NumPy entry) takes.
HALF_TOL = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # 1 ulp of a row's largest |value|


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("n", (1, 9, 17, 65, 1000, 4099))
@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
@pytest.mark.parametrize("dim", (-1, 0))
def test_halves_eager_same_as_op_and_close(name, n, dtype, dim):
    x = make((3, n), dtype, seed=n)
    x[1, n // 2] = -math.inf  # a -inf entry in a finite row
    assert _eager.eager_ok(x)
    y = eager(name, x, dim)
    assert y.dtype == dtype
    assert same(y, ops_path(name, x, dim))
    r = ref(name, x, dim)
    yd = y.double()
    assert torch.equal(torch.isinf(yd), torch.isinf(r))
    fin = torch.isfinite(r)
    assert float((yd[fin] - r[fin]).abs().max() / r[fin].abs().max().clamp_min(1e-300)) <= HALF_TOL[dtype]


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
def test_halves_eager_gradient(name, dtype, monkeypatch):
    """The halves' backward runs the fused row kernels too (float32 inside, one rounding
    on the write), after the eager forward. Through the autograd Functions, whose calls
    are patched here; the C++ node runs the same kernels through _core's C table (the same
    bits: tests/test_torch_node.py)."""
    monkeypatch.setattr(_eager, "softmax_apply", _eager._function_softmax_apply)
    monkeypatch.setattr(_eager, "logsumexp_apply", _eager._function_logsumexp_apply)
    calls = []
    real, real_fast = _eager._backward_ptr, _eager.eager_backward

    def fast(g, y, lse, dim, op):  # the C++ path of small backwards
        gx = real_fast(g, y, lse, dim, op)
        if gx is not None:
            calls.append(y.element_size())
        return gx

    monkeypatch.setattr(_eager, "_backward_ptr", lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr(_eager, "eager_backward", fast)
    w = torch.linspace(-1, 1, 300, dtype=torch.float64)
    x = make((4, 300), dtype, seed=2).requires_grad_()
    y = eager(name, x, -1).double()
    (gx,) = torch.autograd.grad(y.sum() if name == "logsumexp" else (y * w).sum(), x)
    assert calls == [2], "the kernel, on 2-byte elements"
    x64 = x.detach().double().requires_grad_()
    y64 = getattr(torch, name)(x64, -1)
    (want,) = torch.autograd.grad(y64.sum() if name == "logsumexp" else (y64 * w).sum(), x64)
    assert gx.dtype == dtype
    assert float((gx.double() - want).abs().max() / want.abs().max()) <= 4 * HALF_TOL[dtype]


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("opts", CE_OPTS, ids=lambda o: "-".join(o) or "default")
def test_cross_entropy_halves_eager(opts, dtype):
    """Halves take cross_entropy's eager C++ path too (the kernels read and write them,
    float32 inside), with the custom op's dtypes (loss and z of the logits' dtype, lse
    float32) and values, bit for bit."""
    from twopass.torch import _cross_entropy as ce

    x = make((9, 301), dtype, seed=3)
    t = torch.randint(0, 301, (9,), generator=torch.Generator().manual_seed(3))
    t[2] = opts.get("ignore_index", -100)
    opts = dict(opts)
    if opts.get("weight"):
        opts["weight"] = (torch.rand(301, generator=torch.Generator().manual_seed(1)) + 0.5).to(dtype)
    assert ce._direct_ok(x, t, opts.get("weight"))
    a = x.clone().requires_grad_()
    loss, z, lse = tpt.cross_entropy(a, t, **opts, return_z_loss=True, return_lse=True)
    g = torch.ones_like(loss) if loss.dim() else None
    (d,) = torch.autograd.grad(loss, a, g)
    args = (opts.get("weight"), opts.get("ignore_index", -100), opts.get("reduction", "mean"))
    args += (opts.get("label_smoothing", 0.0), opts.get("z_loss", 0.0), opts.get("softcap", 0.0))
    ref_loss, ref_z, ref_lse, ref_grad = torch.ops.twopass.cross_entropy(x, t, *args, True)
    assert loss.dtype == z.dtype == d.dtype == dtype and lse.dtype == torch.float32
    for got, want in ((loss, ref_loss), (z, ref_z), (lse, ref_lse), (d, ref_grad)):
        assert same(got.detach(), want)
    # and the NumPy entry, which rounds the float64 loss to the half once, as the eager path
    w = opts.get("weight")
    npo = {**opts, "weight": None if w is None else w.float()}
    assert same(loss.detach(), twopass.cross_entropy(x, t, **npo))


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
def test_halves_backward_kernels_round_once(name, n, dtype):
    """Every SIMD tail: the halves' backward equals the formula computed in float64 from
    the same half inputs (g, y or x, lse), rounded once to the half, within one ulp of
    the half (the kernel sums in float32 lanes folded into double)."""
    x = make((3, n), dtype, seed=n)
    y = eager(name, x, -1)
    g = make(y.shape, dtype, seed=n + 2)
    fn = {
        "softmax": lambda: _eager.softmax_backward(g, y, -1, False),
        "log_softmax": lambda: _eager.softmax_backward(g, y, -1, True),
        "logsumexp": lambda: _eager.logsumexp_backward(g, x, y, -1, False),
    }[name]
    gx = fn()
    assert gx.dtype == dtype and gx.shape == x.shape
    g64, y64, x64 = g.double(), y.double(), x.double()
    if name == "softmax":
        want = y64 * (g64 - (g64 * y64).sum(-1, keepdim=True))
    elif name == "log_softmax":
        want = g64 - torch.exp(y64) * g64.sum(-1, keepdim=True)
    else:
        want = g64[:, None] * torch.exp(x64 - y64[:, None])
    err = (gx.double() - want).abs() / want.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    assert float(err.max()) <= 2 * HALF_TOL[dtype]


@pytest.mark.parametrize("n", ("wide", "wide+3"))
def test_float16_softmax_backward_both_sides_of_the_wide_row(n):
    """float16's softmax backward widens g and y once into a float32 row per thread up
    to RELOAD_WIDE_ROW_ELEMENTS, and converts them twice beyond: both round once."""
    from twopass import _core

    n = _core.RELOAD_WIDE_ROW_ELEMENTS + (3 if n == "wide+3" else 0)
    y = eager("softmax", make((1, n), torch.float16, seed=4), -1)
    g = make((1, n), torch.float16, seed=5)
    gx = _eager.softmax_backward(g, y, -1, False)
    g64, y64 = g.double(), y.double()
    want = y64 * (g64 - (g64 * y64).sum(-1, keepdim=True))
    assert float(((gx.double() - want).abs() / want.abs().max()).max()) <= 2 * HALF_TOL[torch.float16]


def test_large_outputs_on_huge_pages_behave_as_tensors():
    """Outputs from _alloc.HUGE_THRESHOLD bytes up come from a 2 MiB-aligned mapping
    (where THP is in madvise mode): same values as the custom op, an ordinary
    contiguous tensor that outlives everything but itself, forward and backward."""
    from twopass import _alloc

    rows = _alloc.HUGE_THRESHOLD // (4 * 4096)
    x = make((rows, 4096), torch.float32, seed=11)
    y = eager("softmax", x, -1)
    assert same(y, ops_path("softmax", x, -1))
    assert y.is_contiguous() and y.dtype == torch.float32 and y.shape == x.shape
    if _alloc.ENABLED:
        assert y.data_ptr() % _alloc.HUGE_PAGE == 0
    g = make(y.shape, torch.float32, seed=12)
    gx = _eager.softmax_backward(g, y, -1, False)
    assert gx.shape == x.shape and gx.is_contiguous()
    want = y.double() * (g.double() - (g.double() * y.double()).sum(-1, keepdim=True))
    assert float((gx.double() - want).abs().max()) <= 1e-6
    z = y[:2].clone()
    del y  # the mapping goes with the last reference; the clone is its own memory
    torch.testing.assert_close(z, eager("softmax", x[:2], -1), rtol=4e-6, atol=0)  # (auto may take another algorithm)
    half = eager("log_softmax", x.to(torch.bfloat16).repeat(2, 1), -1)
    assert half.dtype == torch.bfloat16 and same(half, ops_path("log_softmax", x.to(torch.bfloat16).repeat(2, 1), -1))


# The common small case in one C++ call (csrc/torch_eager.cpp, _eager.eager_rows and
# eager_backward): taken exactly where the Python path would run the same kernel, with
# the same algorithm, so the same bits; None everywhere else.
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@pytest.fixture(params=("shim", "python_api"))
def reader(request):
    """Both ways the C++ calls read tensors and make outputs: torch's C shim (where the
    self-test at import passed, as with the pinned torch) and the Python C API."""
    found = _eager.eager_shim()
    if request.param == "shim" and not found:
        pytest.skip("torch's C shim is not in use in this process")
    _eager.eager_shim(request.param == "shim")
    yield request.param
    _eager.eager_shim(found)


def test_shim_found_with_the_pinned_torch():
    """torch 2.13 (pyproject's pin) has the shim's functions and the tensor layout the
    self-test checks: the fast reads must not silently fall back there."""
    if torch.__version__.split("+")[0] != "2.13.0":
        pytest.skip("checked on the pinned torch")
    assert _eager.eager_shim()


@pytest.mark.usefixtures("reader")
def test_fast_outputs_are_ordinary_tensors():
    """An output made through either reader: empty_like's dtype, shape and strides (x's,
    size-1 dims included), a tensor of its own memory that dies with its last reference."""
    import gc
    import sys
    import weakref

    for x in (make((3, 50), torch.float32), make((1024, 1), torch.float64).t(), make((2, 1, 5), torch.bfloat16)):
        y = _eager.eager_rows(x, -1, False)
        want = torch.empty_like(x)
        assert type(y) is torch.Tensor and y.dtype == x.dtype and y.shape == x.shape
        assert y.stride() == want.stride() and not y.requires_grad and y.grad_fn is None
        assert same(y, _eager.softmax_forward(x, -1, False))
        assert sys.getrefcount(y) == 2  # (the name and getrefcount's argument)
        dead = weakref.ref(y)
        del y
        gc.collect()
        assert dead() is None
    g = make((3, 50), torch.float32, seed=1)
    gx = _eager.eager_backward(g, tpt.softmax(g, -1), None, -1, _op(False))
    assert type(gx) is torch.Tensor and gx.shape == g.shape and sys.getrefcount(gx) == 2


def test_shim_switched_off_by_environment():
    import subprocess
    import sys

    code = "import twopass.torch as t; from twopass.torch import _eager as e; print(e.eager_shim())"
    env = dict(os.environ, TWOPASS_TORCH_SHIM="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"


def _fast_lengths(dtype):
    """Row lengths either side of each algorithm boundary the C++ path restates, within
    its byte limit (_SMALL_SOFTMAX_BYTES): log_softmax's SHORT_ROW_BYTES (in float32
    for the halves), the halves' softmax scratch row (RELOAD_SCRATCH_BYTES)."""
    from twopass import _core
    from twopass._softmax import SHORT_ROW_BYTES

    unit = 4 if dtype.itemsize == 2 else dtype.itemsize
    short, scratch = SHORT_ROW_BYTES // unit, _core.RELOAD_SCRATCH_BYTES // 4
    return sorted({1, 7, 33, short - 1, short, short + 1, scratch - 1, scratch, scratch + 1})


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", ("softmax", "log_softmax"))
def test_fast_path_same_bits_as_python_path(name, dtype):
    from twopass._softmax import _SMALL_SOFTMAX_BYTES, SMALL_HALF_RELOAD_BYTES

    log = name == "log_softmax"
    for n in _fast_lengths(dtype):
        for rows in (1, 3):
            x = make((rows, n), dtype, seed=n + rows)
            y = _eager.eager_rows(x, -1, log)
            fits = rows * n * dtype.itemsize <= _SMALL_SOFTMAX_BYTES
            halves_beyond_scratch = (
                dtype.itemsize == 2 and not log and n * 4 > 16 << 10 and 2 * rows * n * 4 > SMALL_HALF_RELOAD_BYTES
            )
            assert (y is not None) == (fits and not halves_beyond_scratch), (n, rows)
            want = _eager.softmax_forward(x, -1, log)  # the Python path: its own algorithm choice
            got = eager(name, x, -1)
            assert same(got, want), (n, rows)
            if y is not None:
                assert same(y, want) and y.is_contiguous()


@pytest.mark.usefixtures("reader")
def test_fast_path_declines_what_python_handles():
    x = make((4, 50), torch.float32)
    rows = _eager.eager_rows
    assert rows(x, -1, False) is not None and rows(x, 1, False) is not None
    declined = [
        (x, 0),  # not the last dim
        (x, 2),  # out of range: Python raises the IndexError
        (x, True),  # a bool is not an int here
        (x, np.int64(-1)),
        (x.t().contiguous().t(), -1),  # not contiguous
        (x[:, ::2], -1),
        (x.to(torch.int32), -1),
        (x.to("meta"), -1),
        (x.to_sparse(), -1),
        (torch.tensor(1.0), 0),  # 0-d
        (make((17, 1024), torch.float32), -1),  # beyond _SMALL_SOFTMAX_BYTES
        (x.as_subclass(_Sub), -1),  # a subclass: the custom op's path
        ("not a tensor", -1),
    ]
    for t, dim in declined:
        assert rows(t, dim, False) is None, (t.shape if isinstance(t, torch.Tensor) else t, dim)
    p = torch.nn.Parameter(x.clone())
    assert rows(p, -1, False) is False  # needs a gradient: the autograd Function's path
    assert rows(x.clone().requires_grad_(), -1, True) is False
    assert rows(x.clone().requires_grad_(), 0, True) is None
    with torch.no_grad():
        assert same(rows(p, -1, False), tpt.softmax(x, -1))
    with torch.inference_mode():
        assert rows(x, -1, True) is not None
    # anything that intercepts calls
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Fm(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class Dm(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    for mode in (Fm(), Dm()):
        with mode:
            assert rows(x, -1, False) is None
            assert same(tpt.softmax(x, -1), torch.ops.twopass.softmax(x, -1, False))
    seen = []
    torch.func.vmap(lambda r: seen.append(rows(r, -1, False)) or r)(x)
    assert seen == [None]


class _Sub(torch.Tensor):
    pass


def _op(log):
    return _eager._LOG_SOFTMAX if log else _eager._SOFTMAX


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", ("softmax", "log_softmax"))
def test_fast_backward_same_bits(name, dtype):
    log = name == "log_softmax"
    for n in (1, 17, 1000, 30000):  # (30000: beyond the forward's 64 KiB, not the backward's limit)
        x = make((3, n), dtype, seed=n)
        y = eager(name, x, -1)
        g = make(y.shape, dtype, seed=n + 1)
        gx = _eager.eager_backward(g, y, None, -1, _op(log))
        assert gx is not None and same(gx, _eager.softmax_backward(g, y, -1, log))
        a = x.clone().requires_grad_()
        (d,) = torch.autograd.grad(eager(name, a, -1), a, g)  # the autograd Function's backward
        assert same(d, gx)
    y = eager(name, make((4, 30), dtype), -1)
    g = make((4, 30), dtype, seed=3)
    back = _eager.eager_backward
    for gg, yy, dim in (
        (g.double() if dtype != torch.float64 else g.float(), y, -1),  # dtypes differ
        (g[:2], y[:2].t().contiguous().t(), -1),  # y not contiguous
        (g.t().contiguous().t(), y, -1),
        (g[:, :29], y[:, :29].contiguous(), 0),  # not the last dim
        (g.reshape(2, 60), y.reshape(2, 60)[:, :30], -1),  # (y not contiguous)
        (g.reshape(1, 4, 30), y, -1),  # shapes differ
    ):
        assert back(gg, yy, None, dim, _op(log)) is None


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
def test_fast_cross_entropy_same_bits_and_declines(dtype, reduction):
    """The loss without a gradient in one C++ call (_core.eager_cross_entropy): the bits
    of _direct (the Python path, which the custom op runs too), None where that call
    does not apply."""
    from twopass.torch import _cross_entropy as ce

    fast = ce._eager_loss
    code = ce._REDUCTION[reduction]
    for rows, n, opts in ((1, 1024, (0.0, 0.0, 0.0)), (5, 33, (0.1, 1e-4, 0.0)), (3, 5000, (0.0, 0.0, 30.0))):
        x = make((rows, n), dtype, seed=rows)
        t = torch.randint(0, n, (rows,), generator=torch.Generator().manual_seed(n))
        t[-1] = -100
        loss = fast(x, t, -100, code, *opts, False)
        want = ce._direct(x, t, None, -100, reduction, *opts, None, False)
        assert loss is not None and same(loss, want), (rows, n, opts)
        assert loss.shape == ((rows,) if reduction == "none" else ())
    x = make((4, 30), dtype)
    t = torch.tensor([0, 29, 7, -100])
    assert fast(x, t, -100, code, 0.0, 0.0, 0.0, False) is not None
    for xx, tt, ignore in (
        (x.t().contiguous().t(), t, -100),  # not contiguous
        (x[:, ::2], t, -100),
        (x[0], t[0], -100),  # (C,) logits: the Python path's reshapes
        (x.reshape(2, 2, 30).transpose(1, 2), t.reshape(2, 2), -100),  # (N, C, d)
        (x, t.to(torch.int32), -100),
        (x, t.float(), -100),  # Python raises the TypeError
        (x, t[:3], -100),  # Python raises the ValueError
        (x, t.reshape(4, 1), -100),
        (x, torch.stack([t, t], 1)[:, 0], -100),  # target not contiguous
        (x, t, np.int64(-100)),  # Python converts
        (x, t, True),
        (x.to("meta"), t, -100),
        (x[:0], t[:0], -100),  # no rows
        (x.as_subclass(_Sub), t, -100),
        (x, t.as_subclass(_Sub), -100),
    ):
        assert fast(xx, tt, ignore, code, 0.0, 0.0, 0.0, False) is None
    with torch.no_grad():
        assert same(
            fast(x.clone().requires_grad_(), t, -100, code, 0.0, 0.0, 0.0, False),
            fast(x, t, -100, code, 0.0, 0.0, 0.0, False),
        )
    with pytest.raises(ValueError, match="outside"):
        fast(x, torch.tensor([0, 30, 1, 2]), -100, code, 0.0, 0.0, 0.0, False)


@pytest.mark.usefixtures("reader")
def test_negative_views_are_resolved():
    """A negative view holds -x in memory (torch._neg_view; a complex tensor's
    conj().imag, contiguous when it has one element): neither fast path reads it raw."""
    x = make((3, 7), torch.float32, seed=6)
    v = torch._neg_view(x)
    assert v.is_neg() and v.is_contiguous()
    assert _eager.eager_rows(v, -1, False) is None and not _eager.eager_ok(v)
    for name in ("softmax", "log_softmax", "logsumexp"):
        torch.testing.assert_close(eager(name, v, -1), getattr(torch, name)(-x, -1))
    t = torch.tensor([0, 6, 3])
    torch.testing.assert_close(tpt.cross_entropy(v, t), F.cross_entropy(-x, t))
    im = torch.tensor([[1.0 + 2.5j]]).conj().imag  # -2.5, stored as 2.5
    assert im.is_neg() and im.is_contiguous()
    torch.testing.assert_close(tpt.logsumexp(im, -1), torch.tensor([-2.5]))
    g = make((3, 7), torch.float32, seed=7)
    y = tpt.softmax(x, -1)
    assert _eager.eager_backward(torch._neg_view(g), y, None, -1, _op(False)) is None


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_fast_logsumexp_backward_same_bits(dtype):
    back = _eager.eager_backward
    for n, keepdim in ((1, False), (17, True), (1000, False)):
        x = make((3, n), dtype, seed=n)
        r = tpt.logsumexp(x, -1, keepdim=keepdim)
        g = make(r.shape, dtype, seed=n + 1)
        gx = back(g, x, r, -1, _eager._LSE)
        assert gx is not None and same(gx, _eager.logsumexp_backward(g, x, r, -1, keepdim))
        a = x.clone().requires_grad_()
        (d,) = torch.autograd.grad(tpt.logsumexp(a, -1, keepdim=keepdim), a, g)  # the Function's backward
        assert same(d, gx)
    x = make((4, 30), dtype)
    r = tpt.logsumexp(x, -1)
    g = make((4,), dtype, seed=2)
    other = torch.float64 if dtype != torch.float64 else torch.float32
    for gg, xx, rr in (
        (g.to(other), x, r),  # dtypes differ
        (g, x, r.to(other)),
        (g[:3], x, r),  # not one per row
        (g, x, r[:3]),
        (g, x, None),
        (torch.stack([g, g], 1)[:, 0], x, r),  # g not contiguous
        (g, x[:, ::2], r),
    ):
        assert back(gg, xx, rr, -1, _eager._LSE) is None


@pytest.mark.usefixtures("reader")
def test_fast_paths_from_several_python_threads():
    """The C++ calls release the GIL around kernels of 4096 elements or more and hold it
    below: four Python threads calling at once get what one thread gets."""
    from concurrent.futures import ThreadPoolExecutor

    xs = [make((r, n), torch.float32, seed=r + n) for r, n in ((1, 1024), (8, 1000), (3, 5000), (2, 7))]
    t = torch.tensor([0, 1, 2])
    want = [(tpt.softmax(x, -1), tpt.log_softmax(x, -1)) for x in xs]
    want_ce = tpt.cross_entropy(xs[2], t)

    def work(i):
        for _ in range(50):
            x = xs[i % len(xs)]
            y, ly = tpt.softmax(x, -1), tpt.log_softmax(x, -1)
            w = want[i % len(xs)]
            if not (same(y, w[0]) and same(ly, w[1]) and same(tpt.cross_entropy(xs[2], t), want_ce)):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
def test_fast_cross_entropy_with_gradient(dtype, reduction):
    """Logits that need a gradient: the C++ call answers False (small logits) so that the
    autograd node is taken (C++, or the autograd Function until it loads), whose forward
    gets loss and gradient from it: the bits of _direct with a gradient buffer."""
    from twopass.torch import _cross_entropy as ce

    fast, code = ce._eager_loss, ce._REDUCTION[reduction]
    for rows, n, opts in ((1, 1024, (0.0, 0.0, 0.0)), (5, 33, (0.1, 1e-4, 30.0))):
        x = make((rows, n), dtype, seed=n)
        t = torch.randint(0, n, (rows,), generator=torch.Generator().manual_seed(rows))
        assert fast(x.clone().requires_grad_(), t, -100, code, *opts, False) is False
        loss, grad = fast(x, t, -100, code, *opts, True)
        want_grad = torch.empty_like(x)
        want = ce._direct(x, t, None, -100, reduction, *opts, want_grad, False)
        assert same(loss, want) and same(grad, want_grad)
        a = x.clone().requires_grad_()
        got = tpt.cross_entropy(
            a, t, reduction=reduction, label_smoothing=opts[0], z_loss=opts[1], softcap=opts[2] or None
        )
        fn = got.grad_fn
        assert fn.name() in ("twopass::CrossEntropyBackward", "_EagerBackward") and same(got.detach(), want)
        (d,) = torch.autograd.grad(got, a, torch.ones_like(got))
        assert same(d, want_grad)
    big = make((3, 40000), dtype)  # beyond 64 KiB: the Python forward, with its own checks
    t = torch.tensor([0, 1, 2])
    assert fast(big.clone().requires_grad_(), t, -100, code, 0.0, 0.0, 0.0, False) is None
    assert fast(big, t, -100, code, 0.0, 0.0, 0.0, True) is None


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_fast_logsumexp_same_bits_as_python_path(dtype):
    """twopass.torch.logsumexp of a contiguous CPU tensor of at most _SMALL_SOFTMAX_BYTES
    over its last dim is one C++ call (eager_lse): the bits and shape of the Python path
    (logsumexp_forward), keepdim or not, 0-d for one row; anything else is None (the
    Python path), False where x needs a gradient (the autograd Function, same gradient)."""
    from twopass._softmax import _SMALL_SOFTMAX_BYTES

    lse = _eager.eager_lse
    limit = _SMALL_SOFTMAX_BYTES // dtype.itemsize
    for shape in [(1,), (7,), (1000,), (3, 65), (2, 1, 33), (limit,), (8, limit // 8), (limit + 1,)]:
        x = make(shape, dtype, seed=len(shape))
        x.view(-1)[0] = -math.inf
        for keepdim in (False, True):
            y = lse(x, -1, keepdim)
            if x.numel() > limit:
                assert y is None
                continue
            want = _eager.logsumexp_forward(x, -1, keepdim)
            assert type(y) is torch.Tensor and same(y, want) and y.is_contiguous(), (shape, keepdim)
            assert same(tpt.logsumexp(x, -1, keepdim), want)
    x = make((4, 50), dtype)
    declined = [
        (x, 0, False),  # not the last dim
        (x, 2, False),  # out of range: Python raises the IndexError
        (x, -1, 1),  # keepdim not a bool
        (x, True, False),
        (x[:, ::2], -1, False),  # not contiguous
        (torch.empty(4, 0, dtype=dtype), -1, False),  # empty rows: -inf by the Python path
        (torch.tensor(1.0, dtype=dtype), 0, False),  # 0-d
        (x.as_subclass(_Sub), -1, False),
        ("not a tensor", -1, False),
    ]
    for args in declined:
        assert lse(*args) is None, args[1:]
    p = x.clone().requires_grad_()
    assert lse(p, -1, False) is False  # needs a gradient: the autograd Function's path
    g = torch.autograd.grad(tpt.logsumexp(p, -1).sum(), p)[0]
    # d logsumexp / dx = exp(x - lse), with the lse the forward gave (rounded to x's dtype)
    want = torch.exp(x.double() - tpt.logsumexp(x, -1, True).double()).to(dtype)
    torch.testing.assert_close(g, want, rtol=1e-2 if dtype.itemsize == 2 else 1e-5, atol=1e-3)
