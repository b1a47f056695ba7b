"""Run the installed SciPy's own tests of softmax, log_softmax and logsumexp
(scipy/special/tests/test_logsumexp.py) against twopass.scipy.

The file is copied to a temporary directory and its one import of the three functions
is swapped for ``from twopass.scipy import ...``; SciPy's conftest is loaded as a plugin
for its `xp` fixture (NumPy only here) and markers. Tests of what twopass does not do
are skipped by `skips.py` next to this script, the copy's conftest (not named so here:
pytest of tests/ would load it): complex inputs and array-API device placement. All
else must pass: ``python tests/scipy_compat/run.py`` exits with pytest's status.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile

IMPORT = "from scipy.special import log_softmax, logsumexp, softmax"
SWAPPED = "from twopass.scipy import log_softmax, logsumexp, softmax"


def main() -> int:
    import scipy.special

    src = pathlib.Path(scipy.special.__file__).parent / "tests" / "test_logsumexp.py"
    text = src.read_text()
    if text.count(IMPORT) != 1:
        sys.exit(f"{src}: expected the line {IMPORT!r} once; SciPy's test file changed, update {__file__}")
    with tempfile.TemporaryDirectory() as tmp:
        dst = pathlib.Path(tmp)
        (dst / "test_logsumexp_twopass.py").write_text(text.replace(IMPORT, SWAPPED))
        shutil.copy(pathlib.Path(__file__).with_name("skips.py"), dst / "conftest.py")
        print(f"scipy {scipy.__version__}: {src} with {SWAPPED!r}", flush=True)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "scipy.conftest", "-p", "no:cacheprovider", "-rs"]
        return subprocess.call([*cmd, *sys.argv[1:], str(dst)], cwd=dst)


if __name__ == "__main__":
    sys.exit(main())
