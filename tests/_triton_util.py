"""Shared setup of the Triton tests (test_triton*.py): the interpreter where CUDA is absent, and
the kernels' modules, loaded once.

Importing this module sets TRITON_INTERPRET=1 when no CUDA device is present, before triton
decorates any kernel, and skips the importing test module when torch or triton is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates the kernels
pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEV = "cpu" if INTERPRET else "cuda"


def load(name: str):
    """twopass.triton.<name>; loaded from its path when the twopass package itself cannot be
    imported (e.g. its compiled CPU core is not built for this Python)."""
    try:
        return importlib.import_module(f"twopass.triton.{name}")
    except ImportError:
        if "_twopass_triton" not in sys.modules:
            root = Path(__file__).resolve().parents[1] / "src" / "twopass" / "triton"
            spec = importlib.util.spec_from_file_location(
                "_twopass_triton", root / "__init__.py", submodule_search_locations=[str(root)]
            )
            mod = importlib.util.module_from_spec(spec)
            sys.modules["_twopass_triton"] = mod
            spec.loader.exec_module(mod)
        return importlib.import_module(f"_twopass_triton.{name}")
