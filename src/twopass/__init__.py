"""twopass: softmax, log_softmax, logsumexp and cross-entropy at the speed of memory.

The CPU kernels implement the Two-Pass Softmax algorithm (Dukhan & Ablavatski, 2020):
exp(x) is kept as a (mantissa, exponent) pair, so the normaliser is summed without
first finding the maximum. See `python -m twopass info | bench | accuracy`.
"""

__version__ = "0.1.0"

from . import reference
from ._arrays import ALGORITHMS
from ._cross_entropy import cross_entropy
from ._dispatch import info
from ._logsumexp import logsumexp
from ._softmax import log_softmax, softmax

__all__ = ["ALGORITHMS", "cross_entropy", "info", "log_softmax", "logsumexp", "reference", "softmax", "__version__"]
