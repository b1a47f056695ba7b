"""Every public function is typed and documented the way NumPy and SciPy document theirs:
a summary line, then Parameters and Returns sections (and Raises where it can raise);
every argument annotated and named in the docstring; the doc examples run as written."""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import re

import pytest

import twopass
import twopass.reference
import twopass.scipy

torch = pytest.importorskip("torch")
import twopass.torch as tpt  # noqa: E402 - an import error in twopass fails, never skips
import twopass.torch.distributed as tpd  # noqa: E402

PUBLIC = [
    twopass.softmax,
    twopass.log_softmax,
    twopass.logsumexp,
    twopass.cross_entropy,
    twopass.info,
    twopass.reference.softmax,
    twopass.reference.log_softmax,
    twopass.reference.logsumexp,
    tpt.softmax,
    tpt.log_softmax,
    tpt.logsumexp,
    tpt.cross_entropy,
    tpt.linear_cross_entropy,
    tpd.softmax,
    tpd.log_softmax,
    tpd.logsumexp,
    tpd.cross_entropy,
    tpd.linear_cross_entropy,
    tpd.shard_offset,
    twopass.scipy.softmax,
    twopass.scipy.log_softmax,
    twopass.scipy.logsumexp,
]
if importlib.util.find_spec("jax") is not None:
    import twopass.jax as tpj

    PUBLIC += [tpj.softmax, tpj.log_softmax, tpj.logsumexp, tpj.cross_entropy]
RAISES = {twopass.info, twopass.reference.softmax, twopass.reference.log_softmax, twopass.reference.logsumexp}
RAISES |= {tpd.shard_offset}


def _name(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@pytest.mark.parametrize("fn", PUBLIC, ids=_name)
def test_typed_and_documented(fn):
    sig = inspect.signature(fn)
    assert sig.return_annotation is not inspect.Signature.empty, "no return type"
    doc = inspect.getdoc(fn)
    assert doc and doc.splitlines()[0].strip(), "no summary line"
    sections = ("Parameters",) if sig.parameters else ()
    for section in sections + ("Returns",) + (() if fn in RAISES else ("Raises",)):
        assert re.search(rf"^{section}\n-+$", doc, re.M), f"no {section} section"
    params = doc.split("Parameters", 1)[-1].split("Returns", 1)[0]
    for p in sig.parameters.values():
        assert p.annotation is not inspect.Parameter.empty, f"{p.name} is not annotated"
        if p.name not in ("isa",):  # isa: for tests and benchmarks, documented in a note
            assert re.search(rf"\b{p.name}\b", params), f"{p.name} is not documented"


def test_doc_examples_run():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    examples = 0
    for fn in (twopass.softmax, twopass.log_softmax, twopass.logsumexp, twopass.scipy.logsumexp):
        for test in finder.find(fn, _name(fn), globs={}):
            examples += len(test.examples)
            runner.run(test)
    assert examples >= 4
    assert runner.failures == 0


def test_help_reads_like_numpy():
    text = inspect.getdoc(twopass.softmax)
    assert "{common}" not in text and "axis : int" in text and "numpy.exceptions.AxisError" in text
