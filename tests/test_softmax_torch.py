"""twopass.torch.softmax and log_softmax: the custom ops against torch (values,
gradients, registrations); helpers shared with test_logsumexp_torch.py.

CPU tensors exercise the C++ kernels through the ops; CUDA tensors (when a GPU is present)
the Triton kernels. `torch.library.opcheck` checks the fake (meta) functions, the autograd
registration and the schemas, which is what torch.compile relies on.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import twopass.torch as tpt  # noqa: E402 - an import error in twopass fails, never skips

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# ||y - ref|| / ||ref|| per dtype (float16/bfloat16: their own rounding dominates).
RTOL = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double().cpu(), ref.double().cpu()
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(y[~fin & ~torch.isnan(ref)], ref[~fin & ~torch.isnan(ref)])
    return float(torch.linalg.vector_norm(y[fin] - ref[fin]) / torch.linalg.vector_norm(ref[fin]).clamp_min(1e-300))


def make(shape, dtype, device, transposed=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape[::-1] if transposed else shape, generator=g, dtype=torch.float64) * 3
    x = x.t() if transposed else x
    return x.to(device=device, dtype=dtype)


def dtypes_for(device):
    return [torch.float32, torch.float64, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transposed", (False, True), ids=("c", "t"))
@pytest.mark.parametrize("dim", (-1, 0))
def test_forward_matches_torch(device, dim, transposed):
    for dtype in dtypes_for(device):
        x = make((6, 300), dtype, device, transposed)
        x64 = x.double()
        for fn, ref in ((tpt.softmax, torch.softmax), (tpt.log_softmax, torch.log_softmax)):
            y = fn(x, dim)
            assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
            assert y.stride() == torch.empty_like(x).stride()
            assert rel_err(y, ref(x64, dim)) <= RTOL[dtype], (fn.__name__, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_special_values(device):
    x = torch.tensor(
        [[1.0, float("nan"), 2.0], [1.0, float("inf"), 2.0], [float("-inf")] * 3, [0.0, float("-inf"), 3e38]],
        device=device,
    )
    for fn, ref in ((tpt.softmax, torch.softmax), (tpt.log_softmax, torch.log_softmax)):
        torch.testing.assert_close(fn(x, -1), ref(x, -1), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_torch(device):
    for dtype in (torch.float32, torch.float64) if device == "cpu" else (torch.float32, torch.bfloat16):
        for dim, transposed in ((-1, False), (0, False), (-1, True)):
            x = make((5, 200), dtype, device, transposed, seed=1)
            g = make((5, 200), dtype, device, seed=2)
            for fn, ref in (
                (tpt.softmax, torch.softmax),
                (tpt.log_softmax, torch.log_softmax),
            ):
                a = x.detach().clone().requires_grad_()
                b = x.detach().double().requires_grad_()
                out = fn(a, dim)
                out.backward(g if out.shape == g.shape else g.narrow(dim % 2, 0, 1))
                rout = ref(b, dim)
                rout.backward((g if rout.shape == g.shape else g.narrow(dim % 2, 0, 1)).double())
                assert rel_err(a.grad, b.grad) <= max(RTOL[dtype], 1e-5) * 10, (dtype, dim, transposed)


def test_gradcheck_float64_cpu():
    x = make((3, 7), torch.float64, "cpu").requires_grad_()
    assert torch.autograd.gradcheck(lambda t: tpt.softmax(t, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: tpt.log_softmax(t, 0), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = make((4, 70), torch.float32, device, seed=3)
    g = make((4, 70), torch.float32, device, seed=4)
    y = torch.softmax(x, -1)
    ops = torch.ops.twopass
    torch.library.opcheck(ops.softmax.default, (x.requires_grad_(), -1, False))
    torch.library.opcheck(ops.softmax.default, (x, 0, True))
    torch.library.opcheck(ops.softmax_backward.default, (g, y, -1, False))


def test_scalar_and_empty():
    x = torch.tensor(2.0)
    assert tpt.softmax(x, 0).item() == 1.0
    assert tpt.softmax(torch.empty(3, 0), -1).shape == (3, 0)
