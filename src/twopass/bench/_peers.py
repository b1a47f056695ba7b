"""The peers: what a user would otherwise call, run in the same process on the same buffers.

Each peer is imported only when used, and skipped with a note when it is not installed.
A peer writes into the preallocated output where its API allows (`allocates: false`);
otherwise it returns a new array (`allocates: true`), and that allocation is part of
its time, as it is for its users.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from ._measure import BufferSet, output_of


class PeerUnsupported(Exception):
    """This peer has no form of this op (the bench records a note and moves on)."""


@dataclass
class Prepared:
    calls: list[Callable[[], Any]]  # one per buffer set; each returns its result
    allocates: bool
    note: str = ""


@dataclass(frozen=True)
class Peer:
    name: str
    modules: tuple[str, ...]  # what must be importable
    threading: str  # "any" (set per thread count), "one" (single-threaded), "own" (own pool)
    prepare: Callable[[str, list[BufferSet], int], Prepared]
    describe: str


# ----------------------------------------------------------------------------------
# NumPy: the plain three-pass softmax, and the max-then-sum logsumexp, with out= buffers.
# ----------------------------------------------------------------------------------
def _no_bfloat16(name: str, sets: list[BufferSet]) -> None:
    if sets[0].x.dtype.name == "bfloat16":
        # ml_dtypes' bfloat16 has no NumPy ufunc loops of its own: each ufunc would go
        # through float32 copies, which measures conversions, not the library.
        raise PeerUnsupported(f"{name} has no bfloat16 arithmetic (ml_dtypes' type only converts)")


def _half_note(sets: list[BufferSet], note: str) -> str:
    if sets[0].x.dtype == np.float16:
        return f"{note}; float16 ufuncs: every step rounded to float16".lstrip("; ")
    return note


def _numpy(op: str, sets: list[BufferSet], threads: int) -> Prepared:
    _no_bfloat16("numpy", sets)
    x0 = sets[0].x
    m = np.empty(x0.shape[:-1] + (1,), x0.dtype)  # row maxima
    s = np.empty_like(m)  # row sums
    tmp = np.empty_like(x0) if op != "softmax" else None  # exp(x - m), when y cannot hold it

    def softmax(b: BufferSet) -> np.ndarray:  # 5R + 3W
        np.max(b.x, axis=-1, keepdims=True, out=m)  # R
        np.subtract(b.x, m, out=b.y)  # R + W
        np.exp(b.y, out=b.y)  # R + W
        np.sum(b.y, axis=-1, keepdims=True, out=s)  # R
        return np.divide(b.y, s, out=b.y)  # R + W

    def log_softmax(b: BufferSet) -> np.ndarray:  # 5R + 3W
        np.max(b.x, axis=-1, keepdims=True, out=m)  # R
        np.subtract(b.x, m, out=b.y)  # R + W
        np.exp(b.y, out=tmp)  # R + W
        np.sum(tmp, axis=-1, keepdims=True, out=s)  # R
        np.log(s, out=s)
        return np.subtract(b.y, s, out=b.y)  # R + W

    def logsumexp(b: BufferSet) -> np.ndarray:  # max then sum: m + log(sum(exp(x - m))); 4R + 2W
        np.max(b.x, axis=-1, keepdims=True, out=m)  # R
        np.subtract(b.x, m, out=tmp)  # R + W
        np.exp(tmp, out=tmp)  # R + W
        np.sum(tmp, axis=-1, out=b.lse)  # R
        np.log(b.lse, out=b.lse)
        return np.add(b.lse, m[..., 0], out=b.lse)

    fn = {"softmax": softmax, "log_softmax": log_softmax, "logsumexp": logsumexp}[op]
    note = "max-then-sum: m + log(sum(exp(x - m)))" if op == "logsumexp" else "three-pass: max, exp, sum, divide"
    return Prepared([lambda b=b: fn(b) for b in sets], allocates=False, note=_half_note(sets, note))


# ----------------------------------------------------------------------------------
# SciPy: scipy.special; it has no out= (allocates).
# ----------------------------------------------------------------------------------
def _scipy(op: str, sets: list[BufferSet], threads: int) -> Prepared:
    import scipy.special as sp

    _no_bfloat16("scipy", sets)
    fn = getattr(sp, op)
    return Prepared([lambda b=b: fn(b.x, axis=-1) for b in sets], allocates=True, note=_half_note(sets, ""))


# ----------------------------------------------------------------------------------
# PyTorch (CPU): torch.softmax / log_softmax / logsumexp with out= where it is accepted.
# ----------------------------------------------------------------------------------
@cache
def _torch_out_ok(op: str) -> bool:
    """Does torch.<op>(x, -1, out=y) exist in this version (and write into y)?"""
    import torch

    x = torch.zeros(2, 3)
    y = torch.empty(2) if op == "logsumexp" else torch.empty(2, 3)
    try:
        r = getattr(torch, op)(x, -1, out=y)
    except (TypeError, RuntimeError):
        return False
    return r.data_ptr() == y.data_ptr()


def tensor(a: np.ndarray) -> Any:
    """A zero-copy torch view of `a` (bfloat16 through its 16-bit pattern: torch.from_numpy
    does not know ml_dtypes' type)."""
    import torch

    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _torch(op: str, sets: list[BufferSet], threads: int) -> Prepared:
    import torch

    torch.set_num_threads(threads)  # intra-op threads, as twopass's `threads`
    fn = getattr(torch, op)
    xs = [tensor(b.x) for b in sets]  # zero-copy views of the same buffers
    if _torch_out_ok(op):
        ys = [tensor(output_of(op, b)) for b in sets]
        return Prepared([lambda x=x, y=y: fn(x, -1, out=y) for x, y in zip(xs, ys)], allocates=False)
    return Prepared([lambda x=x: fn(x, -1) for x in xs], allocates=True, note="no out= in this torch")


# ----------------------------------------------------------------------------------
# ONNX Runtime: a one-node model (opset 13, axis -1), IO binding to our own buffers.
# ----------------------------------------------------------------------------------
_ONNX_NODES = {"softmax": "Softmax", "log_softmax": "LogSoftmax", "logsumexp": "ReduceLogSumExp"}


def _onnx_model(op: str, rank: int, dtype: np.dtype) -> bytes:
    import onnx
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(dtype)
    dims = [f"d{i}" for i in range(rank)]  # symbolic: one model serves every shape of this rank
    x = helper.make_tensor_value_info("x", elem, dims)
    if op == "logsumexp":
        y = helper.make_tensor_value_info("y", elem, dims[:-1])
        node = helper.make_node("ReduceLogSumExp", ["x"], ["y"], axes=[-1], keepdims=0)
    else:
        y = helper.make_tensor_value_info("y", elem, dims)
        node = helper.make_node(_ONNX_NODES[op], ["x"], ["y"], axis=-1)
    model = helper.make_model(
        helper.make_graph([node], f"twopass_bench_{op}", [x], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8  # readable by every onnxruntime that knows opset 13
    onnx.checker.check_model(model)
    return model.SerializeToString()


@cache
def _ort_session(op: str, rank: int, dtype: str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1  # one node: nothing to run side by side
    so.log_severity_level = 3
    return ort.InferenceSession(_onnx_model(op, rank, np.dtype(dtype)), so, providers=["CPUExecutionProvider"])


def _onnxruntime(op: str, sets: list[BufferSet], threads: int) -> Prepared:
    x0 = sets[0].x
    sess = _ort_session(op, x0.ndim, x0.dtype.name, threads)
    calls = []
    for b in sets:
        y = output_of(op, b)
        binding = sess.io_binding()
        binding.bind_cpu_input("x", b.x)  # reads our buffer in place
        binding.bind_output("y", "cpu", 0, y.dtype, list(y.shape), y.ctypes.data)  # writes into ours

        def call(binding: Any = binding, y: np.ndarray = y) -> np.ndarray:
            sess.run_with_iobinding(binding)
            return y

        calls.append(call)
    note = "ReduceLogSumExp node" if op == "logsumexp" else ""
    return Prepared(calls, allocates=False, note=note)


# ----------------------------------------------------------------------------------
# JAX (CPU): jit-compiled; XLA keeps its own thread pool (not settable at run time).
# ----------------------------------------------------------------------------------
def _jax(op: str, sets: list[BufferSet], threads: int) -> Prepared:
    import jax
    import jax.numpy as jnp

    fn = {
        "softmax": jax.nn.softmax,
        "log_softmax": jax.nn.log_softmax,
        "logsumexp": jax.nn.logsumexp,
    }[op]
    jitted = jax.jit(lambda x: fn(x, axis=-1))
    xs = [jnp.asarray(b.x) for b in sets]  # one device copy of the same values, made now
    return Prepared(
        [lambda x=x: jitted(x).block_until_ready() for x in xs],
        allocates=True,
        note="XLA's own thread pool (all cores)",
    )


PEERS: tuple[Peer, ...] = (
    Peer("numpy", ("numpy",), "one", _numpy, "NumPy: three-pass softmax; max-then-sum logsumexp (out= buffers)"),
    Peer("scipy", ("scipy",), "one", _scipy, "scipy.special.softmax / log_softmax / logsumexp"),
    Peer("torch", ("torch",), "any", _torch, "torch.softmax / log_softmax / logsumexp on CPU, set_num_threads"),
    Peer(
        "onnxruntime",
        ("onnxruntime", "onnx"),
        "any",
        _onnxruntime,
        "ONNX Runtime CPU, one-node model (opset 13), IO binding",
    ),
    Peer("jax", ("jax",), "own", _jax, "jax.nn.softmax / log_softmax / logsumexp, jit, block_until_ready"),
)


def available(names: list[str] | None = None) -> tuple[list[Peer], list[str]]:
    """The installed peers (all, or those named), and a note for each missing one."""
    found, notes = [], []
    for p in PEERS:
        if names is not None and p.name not in names:
            continue
        missing = [m for m in p.modules if importlib.util.find_spec(m) is None]
        if missing:
            notes.append(f"peer {p.name} skipped: {', '.join(missing)} not installed")
        else:
            found.append(p)
    return found, notes


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("numpy", "scipy", "torch", "onnx", "onnxruntime", "jax", "jaxlib", "rich", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def to_numpy(result: Any) -> np.ndarray:
    """A peer's result as a NumPy array (for the correctness check)."""
    if isinstance(result, np.ndarray):
        return result
    if hasattr(result, "detach"):
        import torch

        t = result.detach()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(result)
