"""Every ```python block of README.md runs as written.

Each block is one test, named by the README line its code starts on (`README.md:25`).

Namespaces: every block runs in a fresh namespace. A reader copies one block, not the
whole README, so each block must stand alone (its own imports and inputs); a block that
leaned on names left by an earlier one would break silently when that one changed.

Skips. A block whose first line is a marker comment is skipped where what it names is
missing:
    # needs: cuda        a CUDA device (torch.cuda.is_available())
    # needs: processes   several processes (torch.distributed with more than one rank):
                         never run here; tests/test_distributed.py covers those paths
A block that imports torch (`import torch`, `twopass.torch`) is skipped only when torch
is not installed; one that imports jax (`import jax`, `twopass.jax`), when jax is not.
Nothing else is skipped: a block that raises fails its test.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"^#\s*needs:\s*([\w, ]+)$")
_USES_TORCH = re.compile(r"^\s*(import torch\b|from torch\b|import twopass\.torch\b|from twopass\.torch\b)", re.M)
_USES_JAX = re.compile(r"^\s*(import jax\b|from jax\b|import twopass\.jax\b|from twopass\.jax\b)", re.M)
_KNOWN_NEEDS = {"cuda", "processes"}


def _blocks() -> list[tuple[int, str]]:
    """(line of the block's first code line, code) for each ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def _needs(code: str) -> set[str]:
    first = code.lstrip("\n").splitlines()[0].strip() if code.strip() else ""
    m = _MARKER.match(first)
    return {n.strip() for n in m.group(1).split(",") if n.strip()} if m else set()


def _skip_reason(code: str) -> str | None:
    needs = _needs(code)
    unknown = needs - _KNOWN_NEEDS
    assert not unknown, f"unknown '# needs:' marker {sorted(unknown)}; known: {sorted(_KNOWN_NEEDS)}"
    if "processes" in needs:
        return "needs several processes (torch.distributed); see tests/test_distributed.py"
    has_torch = importlib.util.find_spec("torch") is not None
    if (_USES_TORCH.search(code) or "cuda" in needs) and not has_torch:
        return "needs torch, which is not installed"
    if _USES_JAX.search(code) and importlib.util.find_spec("jax") is None:
        return "needs jax, which is not installed"
    if "cuda" in needs:
        import torch

        if not torch.cuda.is_available():
            return "needs a CUDA device"
    return None


BLOCKS = _blocks()


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python blocks (did the fence style change?)"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str):
    reason = _skip_reason(code)
    if reason:
        pytest.skip(reason)
    # Padded with blank lines so that a traceback names the README's own line numbers.
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), {"__name__": f"readme_block_{line}"})
