"""twopass.torch.logsumexp: the custom op against torch (values, gradients, registrations)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import twopass.torch as tpt  # noqa: E402 - an import error in twopass fails, never skips
from test_softmax_torch import DEVICES, RTOL, dtypes_for, make, rel_err  # noqa: E402


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transposed", (False, True), ids=("c", "t"))
@pytest.mark.parametrize("dim", (-1, 0))
def test_forward_matches_torch(device, dim, transposed):
    for dtype in dtypes_for(device):
        x = make((6, 300), dtype, device, transposed)
        for keepdim in (False, True):
            y = tpt.logsumexp(x, dim, keepdim)
            ref = torch.logsumexp(x.double(), dim, keepdim)
            assert y.shape == ref.shape and y.dtype == dtype
            assert rel_err(y, ref) <= RTOL[dtype], (dtype, keepdim)


@pytest.mark.parametrize("device", DEVICES)
def test_special_values(device):
    x = torch.tensor(
        [[1.0, float("nan"), 2.0], [1.0, float("inf"), 2.0], [float("-inf")] * 3, [0.0, float("-inf"), 3e38]],
        device=device,
    )
    torch.testing.assert_close(tpt.logsumexp(x, -1), torch.logsumexp(x, -1), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_torch(device):
    for dtype in (torch.float32, torch.float64) if device == "cpu" else (torch.float32, torch.bfloat16):
        for dim, transposed in ((-1, False), (0, False), (-1, True)):
            x = make((5, 200), dtype, device, transposed, seed=1)
            g = make((5, 200), dtype, device, seed=2).narrow(dim % 2, 0, 1)
            a = x.detach().clone().requires_grad_()
            b = x.detach().double().requires_grad_()
            tpt.logsumexp(a, dim, True).backward(g)
            torch.logsumexp(b, dim, True).backward(g.double())
            assert rel_err(a.grad, b.grad) <= max(RTOL[dtype], 1e-5) * 10, (dtype, dim, transposed)


def test_gradcheck_float64_cpu():
    x = make((3, 7), torch.float64, "cpu").requires_grad_()
    assert torch.autograd.gradcheck(lambda t: tpt.logsumexp(t, 1), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = make((4, 70), torch.float32, device, seed=3)
    g = make((4, 70), torch.float32, device, seed=4)
    ops = torch.ops.twopass
    torch.library.opcheck(ops.logsumexp.default, (x.requires_grad_(), 1, False))
    lse = torch.logsumexp(x.detach(), 1, True)
    torch.library.opcheck(ops.logsumexp_backward.default, (g[:, :1].contiguous(), x.detach(), lse, 1, True))


def test_scalar_and_empty():
    assert tpt.logsumexp(torch.tensor(2.0), 0).item() == 2.0
    assert torch.isneginf(tpt.logsumexp(torch.empty(3, 0), -1)).all()
