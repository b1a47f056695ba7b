"""The conftest.py of the copy of SciPy's test_logsumexp.py that run.py runs against
twopass.scipy: it skips exactly the tests of what twopass does not do: complex inputs and
array-API device placement (twopass's NumPy API is CPU NumPy). Nothing else is skipped."""

from __future__ import annotations

import pytest
import scipy.special
from scipy._lib._array_api import xp_capabilities_table

import twopass.scipy

# The test file's decorators (make_xp_test_case) look the functions up in SciPy's table of
# array-API capabilities: twopass's functions take the entries of SciPy's same names.
for _name in twopass.scipy.__all__:
    xp_capabilities_table[getattr(twopass.scipy, _name)] = xp_capabilities_table[getattr(scipy.special, _name)]

# The tests that only take complex inputs, or test device placement.
SKIP = {
    "test_logsumexp_complex_sign": "complex input",
    "test_gh21610": "complex input",
    "test_gh21709_small_imaginary": "complex input",
    "test_device": "array-API device placement",
}


def _complex_param(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(isinstance(v, complex) or (isinstance(v, str) and v.startswith("complex")) for v in params.values())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = item.originalname if isinstance(item, pytest.Function) else item.name
        reason = SKIP.get(name) or ("complex input" if _complex_param(item) else None)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"twopass.scipy: {reason}"))
