"""twopass.torch's autograd node in C++ (csrc/torch_autograd_node.cpp, built on first use
by src/twopass/torch/_node.py) against the autograd Functions it replaces: the same bits
forward and backward on every path it takes itself (the one-call paths through _core's C
table) and every path it hands to Python (other layouts, large tensors, create_graph),
autograd's own checks (gradcheck, double backward, in-place changes of a saved output),
errors, and the switch that turns it off. The cross-entropy's node likewise (its
gradient becoming .grad without a copy: tests/test_cross_entropy.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
import twopass.torch as tpt  # noqa: E402
from twopass import _compile, _core  # noqa: E402
from twopass.torch import _eager, _node  # noqa: E402


@pytest.fixture(scope="module")
def node():
    """The node, built into the test run's cache if needed (~15 s once)."""
    try:
        _compile.compiler("the node tests")
    except RuntimeError:
        pytest.skip("no C++ compiler: twopass.torch keeps its autograd Functions")
    mod = _node.start(_eager.use_node, wait=True)
    assert mod is not None, f"the node did not build or load: {_node.error!r}"
    _eager.use_node(mod)
    yield mod
    _eager.use_node(mod)


def run(name, x0, dim, g=None, keepdim=False, with_node=None, node=None):
    """(y, grad_x, grad_fn name) of one forward + backward through the node or the Function."""
    _eager.use_node(node if with_node else None)
    try:
        x = x0.clone().requires_grad_()
        xin = x.mT if getattr(x0, "_transposed", False) else x
        y = tpt.logsumexp(xin, dim, keepdim) if name == "logsumexp" else getattr(tpt, name)(xin, dim)
        (y.sum() if g is None else y).backward(None if g is None else g)
        return y.detach(), x.grad, y.grad_fn.name()
    finally:
        _eager.use_node(node)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (shape, dim): rows in one C++ call (last dim, <= 64 KiB), a dim that is not the last,
# rows beyond 64 KiB (the Python forward), lengths around the SIMD widths
CASES = (((1, 1024), -1), ((3, 17), 1), ((5, 1), -1), ((4, 7, 9), 1), ((6, 100), 0), ((2, 40000), -1), ((65,), 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("upstream", ("tensor", "sum"))
def test_same_bits_as_the_function(node, dtype, name, case, upstream):
    shape, dim = case
    gen = torch.Generator().manual_seed(hash((str(dtype), name, shape)) % 2**31)
    x0 = (torch.randn(shape, generator=gen) * 4).to(dtype)
    if x0.numel() > 3:
        x0.view(-1)[1] = -float("inf")  # a -inf entry: exp 0, its gradient 0
    g = None
    if upstream == "tensor":  # (sum(): an expanded gradient, which the node hands to Python)
        out_shape = x0.shape if name != "logsumexp" else x0.sum(dim).shape
        g = torch.randn(out_shape, generator=gen).to(dtype)
    y1, g1, n1 = run(name, x0, dim, g, with_node=True, node=node)
    y2, g2, n2 = run(name, x0, dim, g, with_node=False, node=node)
    assert same(y1, y2) and same(g1, g2)
    assert n1 == ("twopass::LogSumExpBackward" if name == "logsumexp" else "twopass::SoftmaxBackward")
    assert n2 != n1  # (the Function's node: the comparison compared two paths)


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp"))
def test_same_bits_on_threads_and_special_rows(node, threads, name):
    """Rows split over threads (beyond 16K elements) and rows of NaN, +inf and only -inf."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x0 = torch.randn(64, 4096) * 3
        x0[0] = -float("inf")
        x0[1, 5] = float("nan")
        x0[2, 9] = float("inf")
        x0[3, :] = 0
        x0[3, 7] = 200.0  # one dominating entry
        for keepdim in (False, True):
            gshape = (64, 4096) if name != "logsumexp" else ((64, 1) if keepdim else (64,))
            g = torch.randn(gshape)
            y1, g1, _ = run(name, x0, -1, g, keepdim, with_node=True, node=node)
            y2, g2, _ = run(name, x0, -1, g, keepdim, with_node=False, node=node)
            assert same(y1, y2) and same(g1, g2)
    finally:
        torch.set_num_threads(before)


def test_transposed_input(node):
    """x.mT: not contiguous, so both the node's forward and its backward take the Python path."""
    x0 = torch.randn(300, 5)
    x0._transposed = True
    for name in ("softmax", "log_softmax", "logsumexp"):
        y1, g1, _ = run(name, x0, -1, with_node=True, node=node)
        y2, g2, _ = run(name, x0, -1, with_node=False, node=node)
        assert same(y1, y2) and same(g1, g2)


@pytest.mark.parametrize(
    "f",
    (
        lambda a: tpt.softmax(a, -1),
        lambda a: tpt.softmax(a, 0),
        lambda a: tpt.log_softmax(a, -1),
        lambda a: tpt.logsumexp(a, -1),
        lambda a: tpt.logsumexp(a, 0, True),
    ),
)
def test_gradcheck_and_double_backward(node, f):
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))  # create_graph: the backward in torch ops


def test_retain_graph_and_autograd_grad(node):
    x = torch.randn(5, 33, requires_grad=True)
    loss = (tpt.log_softmax(x * 2, -1) * torch.randn(5, 33)).sum()
    (a,) = torch.autograd.grad(loss, x, retain_graph=True)
    (b,) = torch.autograd.grad(loss, x)
    assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(loss, x)  # the saved output was released


def test_inplace_change_of_the_saved_output_is_caught(node):
    x = torch.randn(3, 8, requires_grad=True)
    y = tpt.softmax(x, -1)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="inplace"):
        y.backward(torch.ones(3, 8))


def test_errors_reach_python_with_their_type(node):
    with pytest.raises(IndexError, match="Dimension out of range"):
        tpt.softmax(torch.randn(3, 4, requires_grad=True), 5)

    def failing_backward(*args):
        raise ValueError("from the backward")

    from twopass.torch import _cross_entropy as ce

    node.init(_core.c_api(), _eager._SOFTMAX, _eager._LOG_SOFTMAX, _eager._LSE, _eager.softmax_fwd, failing_backward,
              _eager.logsumexp_fwd, _eager.logsumexp_bwd, ce.ce_fwd, ce.ce_bwd)  # fmt: skip
    try:
        y = tpt.softmax(torch.randn(3, 8, requires_grad=True), -1)
        with pytest.raises(ValueError, match="from the backward"):
            y.sum().backward()  # (an expanded gradient: the Python path)
    finally:
        _eager.use_node(node)
    with pytest.raises(RuntimeError, match="C table"):
        node.init(0, 0, 0, 0, None, None, None, None, None, None)


CE_OPTS = (
    {},
    {"reduction": "sum", "label_smoothing": 0.1},
    {"reduction": "none", "z_loss": 1e-3},
    {"ignore_index": 3, "softcap": 20.0},
    {"weight": True},
    {"return_z_loss": True, "return_lse": True, "z_loss": 1e-4},
)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("opts", CE_OPTS, ids=lambda o: "-".join(o) or "default")
@pytest.mark.parametrize("upstream", ("one", "scaled"))
@pytest.mark.parametrize("shape", ((4, 1000), (3, 40000)), ids=str)
def test_cross_entropy_same_bits_as_the_function(node, dtype, opts, upstream, shape):
    """The cross-entropy's node: the usual step (loss.backward(): the stored gradient as
    it is) and a scaled upstream gradient (the Python path), extras without gradient."""
    gen = torch.Generator().manual_seed(7)
    x0 = (torch.randn(shape, generator=gen) * 3).to(dtype)
    t = torch.randint(0, shape[1], (shape[0],), generator=gen)
    t[0] = 3  # (ignored where ignore_index is 3)
    kw = dict(opts)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(shape[1], generator=gen).to(dtype)
    outs = []
    for with_node in (True, False):
        _eager.use_node(node if with_node else None)
        try:
            x = x0.clone().requires_grad_()
            out = tpt.cross_entropy(x, t, **kw)
            loss = out[0] if isinstance(out, tuple) else out
            extras = out[1:] if isinstance(out, tuple) else ()
            assert all(e.grad_fn is None and not e.requires_grad for e in extras)
            if upstream == "one":
                (loss.sum() if loss.dim() else loss).backward()
            else:
                loss.backward(torch.full_like(loss, 2.5))
            fn = loss.grad_fn
            while fn.name() == "ViewBackward0":  # (reduction "none": the loss of the target's shape)
                fn = fn.next_functions[0][0]
            outs.append((loss.detach(), *[e.detach() for e in extras], x.grad, fn.name()))
        finally:
            _eager.use_node(node)
    *a, name_a = outs[0]
    *b, name_b = outs[1]
    assert all(same(u, v) for u, v in zip(a, b, strict=True))
    assert name_a == "twopass::CrossEntropyBackward" and name_b != name_a


def test_cached_library_is_keyed_by_versions(node):
    path = _node.library_path()
    assert path.exists() and path.parent == _compile.cache_dir()
    assert f"torch{torch.__version__}" in path.name and f"cp{sys.version_info[0]}{sys.version_info[1]}" in path.name


def test_status_in_info(node):
    import twopass

    assert twopass.info()["torch_node"] == f"loaded from {node.__file__}"


def test_no_compiler_error(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(_compile.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="twopass.torch compiles its autograd node .* C\\+\\+ compiler"):
        _node.command(_node.library_path())


def _grad_fn_names(env_extra, code):
    env = {**os.environ, **env_extra}
    prog = textwrap.dedent(
        """
        import torch, twopass.torch as tpt
        from twopass.torch import _node
        x = torch.randn(2, 8, requires_grad=True)
        print(tpt.softmax(x).grad_fn.name())
        """
    ) + textwrap.dedent(code)
    r = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_first_call_loads_a_cached_node(node):
    """With the node in the cache, the first call that needs a gradient already takes it."""
    names = _grad_fn_names({"TWOPASS_CACHE_DIR": str(_compile.cache_dir())}, "")
    assert names == ["twopass::SoftmaxBackward"]


def test_turned_off(node, tmp_path):
    """TWOPASS_TORCH_NODE=0: the autograd Functions, and no compiler is run."""
    names = _grad_fn_names(
        {"TWOPASS_TORCH_NODE": "0", "TWOPASS_CACHE_DIR": str(tmp_path)},
        """
        tpt.log_softmax(x).sum().backward()
        print(_node.node is None, _node._building is None)
        """,
    )
    assert names == ["SoftmaxFunctionBackward", "True", "True"]
    assert not list(tmp_path.iterdir())


def test_built_in_the_background(node, tmp_path):
    """An empty cache: the Functions while the node builds in a thread, then the node."""
    if shutil.which("c++") is None and shutil.which("g++") is None and not os.environ.get("CXX"):
        pytest.skip("no C++ compiler")
    names = _grad_fn_names(
        {"TWOPASS_CACHE_DIR": str(tmp_path)},
        """
        _node._building.join()
        print(_node.error, tpt.softmax(x).grad_fn.name())
        """,
    )
    assert names == ["SoftmaxFunctionBackward", "None", "twopass::SoftmaxBackward"]
