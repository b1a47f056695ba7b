"""logsumexp (NumPy entry): keepdims and out= on every axis (its values and special
values are checked with the softmax family in test_softmax.py and test_properties.py)."""

from __future__ import annotations

import numpy as np
import pytest

import twopass
from conftest import assert_close


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_keepdims_and_out(axis, keepdims):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    y = twopass.logsumexp(x, axis=axis, keepdims=keepdims)
    assert y.shape == np.sum(x, axis=axis, keepdims=keepdims).shape
    assert_close("logsumexp", x, y, axis=axis, keepdims=keepdims)
    out = np.empty(y.shape)
    assert twopass.logsumexp(x, axis=axis, keepdims=keepdims, out=out) is out
    np.testing.assert_array_equal(out, y)
