"""The host logic of twopass.triton's fast launch (_launch._fast_launch), with a stand-in
for a @triton.jit kernel: which launches go through Triton's path and which through the
kept compiled kernel, the arguments that launcher gets (in the kernel's order, constexprs
and defaults included, as JITFunction.run passes them), and the fallbacks. The real
kernels under it run on a GPU (test_softmax_triton.py, test_fast_launch_*)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _triton_util import LAUNCH  # noqa: E402

EMPTY = inspect.Parameter.empty


class Compiled:
    """What kernel[grid](...) returns: a compiled kernel with its launcher."""

    def __init__(self, log: list, fail: bool = False) -> None:
        self.log, self.fail = log, fail
        self.function, self.packed_metadata = "function", "packed"

    @property
    def run(self):
        def launch(*a):
            if self.fail:
                raise TypeError("a launcher of another signature")
            self.log.append(("kept", a))

        return launch


class Kernel:
    """A JITFunction's surface: parameters (x, y, n, BLOCK, LOG=False) and kernel[grid]."""

    def __init__(self, fail: bool = False) -> None:
        self.log: list = []
        self.arg_names = ["x_ptr", "y_ptr", "n", "BLOCK", "LOG"]
        self.params = [SimpleNamespace(name=n, default=EMPTY) for n in self.arg_names[:-1]]
        self.params.append(SimpleNamespace(name="LOG", default=False))
        self.pre_run_hooks: list = []
        self.compiled = Compiled(self.log, fail)

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.log.append(("triton", grid, args, kw))
            return self.compiled

        return launch


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(LAUNCH, "_FAST_LAUNCH", True)
    monkeypatch.setattr(LAUNCH, "_COMPILED", {})
    monkeypatch.setattr(LAUNCH, "_stream", lambda device: 1234)


def launch(kernel, x, y, n, grid=7, block=1024):
    return LAUNCH._fast_launch(kernel, grid, (x, y, n), {"BLOCK": block}, 4, 0)


def test_the_first_launch_of_a_kind_takes_tritons_path_the_next_the_kept_kernel(fast):
    k = Kernel()
    x, y = torch.zeros(64), torch.zeros(64)
    assert launch(k, x, y, 4096) and launch(k, x, y, 4096, grid=9)
    assert k.log[0] == ("triton", (7,), (x, y, 4096), {"BLOCK": 1024, "num_warps": 4})
    # the launcher's arguments as JITFunction.run passes them: grid, stream, function,
    # metadata, no launch metadata or hooks, then every parameter in order (LOG's default)
    assert k.log[1] == ("kept", (9, 1, 1, 1234, "function", "packed", None, None, None, x, y, 4096, 1024, False))
    assert len(LAUNCH._COMPILED) == 1


@pytest.mark.parametrize(
    "change",
    ["misaligned x", "n not a multiple of 16", "n = 1", "n beyond 32 bits", "dtype", "constexpr", "warps"],
)
def test_arguments_that_specialize_differently_compile_their_own(fast, change):
    """Every difference Triton specializes on (pointer alignment and type, an integer's
    divisibility by 16, = 1, its width) and every constexpr or option leads back through
    Triton's path, never to a kernel kept for other arguments."""
    k = Kernel()
    buf, y = torch.zeros(65), torch.zeros(64)
    launch(k, buf[:64], y, 4096)
    launch(k, buf[:64], y, 4096)
    assert [e[0] for e in k.log] == ["triton", "kept"]
    if change == "misaligned x":
        launch(k, buf[1:], y, 4096)  # 4 bytes past a 16-byte boundary
    elif change == "dtype":
        launch(k, buf[:64].to(torch.float16), y, 4096)
    elif change == "constexpr":
        launch(k, buf[:64], y, 4096, block=2048)
    elif change == "warps":
        LAUNCH._fast_launch(k, 7, (buf[:64], y, 4096), {"BLOCK": 1024}, 8, 0)
    else:
        n = {"n not a multiple of 16": 4097, "n = 1": 1, "n beyond 32 bits": 1 << 32}[change]
        launch(k, buf[:64], y, n)
    assert k.log[-1][0] == "triton"


def test_fallbacks(fast, monkeypatch):
    """Other argument types, pre-run hooks and launch hooks take Triton's path (False);
    a kept launcher that raises turns the fast launch off for the process."""
    k = Kernel()
    x, y = torch.zeros(64), torch.zeros(64)
    assert not LAUNCH._fast_launch(k, 7, (x, y, [4096]), {"BLOCK": 1024}, 4, 0)
    k.pre_run_hooks.append(print)
    assert not launch(k, x, y, 4096)
    k.pre_run_hooks.clear()
    from triton import knobs

    chain = knobs.runtime.launch_exit_hook
    if hasattr(chain, "add"):  # Triton 3.6 on: a chain of hooks, empty unless a profiler adds one
        chain.add(print)
        try:
            assert not launch(k, x, y, 4096)
        finally:
            chain.remove(print)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda *a: None)
    assert not launch(k, x, y, 4096)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", None)
    assert k.log == []
    broken = Kernel(fail=True)
    assert launch(broken, x, y, 4096)  # Triton's path, the kernel kept
    assert not launch(broken, x, y, 4096) and not LAUNCH._FAST_LAUNCH and not LAUNCH._COMPILED
    assert [e[0] for e in broken.log] == ["triton"]


def test_parameters_that_do_not_bind_in_order_are_not_kept(fast):
    """A constexpr without a value or a default cannot be filled in: the launch still
    runs (Triton's path) but the fast launch turns itself off."""
    k = Kernel()
    x, y = torch.zeros(64), torch.zeros(64)
    assert LAUNCH._fast_launch(k, 7, (x, y, 4096), {}, 4, 0)
    assert not LAUNCH._FAST_LAUNCH and not LAUNCH._COMPILED
    assert [e[0] for e in k.log] == ["triton"]


def test_off_by_default():
    """Until a GPU run has checked it (see _launch.py)."""
    import os

    if "TWOPASS_TRITON_FAST_LAUNCH" not in os.environ:
        assert LAUNCH._FAST_LAUNCH is False
