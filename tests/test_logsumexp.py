"""logsumexp (NumPy entry): keepdims and out= on every axis (its values and special
values are checked with the softmax family in test_softmax.py and test_properties.py)."""

from __future__ import annotations

import ml_dtypes
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


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 7)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_result_shape_and_dtype_every_dtype(dtype, shape, keepdims):
    # The halves take another path (computed in float32, rounded back): its result must
    # have the shape NumPy's reductions give, a 0-d array for a 1-d input included.
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    x = np.linspace(-3, 3, int(np.prod(shape))).reshape(shape).astype(dt)
    y = twopass.logsumexp(x, axis=-1, keepdims=keepdims)
    assert y.shape == np.sum(x.astype(np.float64), axis=-1, keepdims=keepdims).shape and y.dtype == dt
    ref = np.log(np.sum(np.exp(x.astype(np.float64)), axis=-1, keepdims=keepdims))
    np.testing.assert_allclose(
        np.asarray(y, np.float64), ref, rtol=2 * float(np.finfo(dt).eps) if dtype != "bfloat16" else 2**-7
    )
    # A 0-d array is a row of one: its logsumexp is itself, 0-d.
    z = twopass.logsumexp(x.reshape(-1)[:1].reshape(()))
    assert z.shape == () and z.dtype == dt and z == x.reshape(-1)[0]
