"""twopass: softmax, log_softmax, logsumexp and cross-entropy at the speed of memory.

The CPU kernels implement the Two-Pass Softmax algorithm (Dukhan & Ablavatski, 2020):
exp(x) is kept as a (mantissa, exponent) pair, so the normaliser is summed without
first finding the maximum. See `python -m twopass info | bench | accuracy`.
"""

__version__ = "0.1.0"

from ._api import ALGORITHMS, log_softmax, logsumexp, softmax
from ._cross_entropy import cross_entropy
from ._dispatch import info

__all__ = ["ALGORITHMS", "cross_entropy", "info", "log_softmax", "logsumexp", "softmax", "__version__"]
