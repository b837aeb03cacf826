"""Small statistics the chapters share: proportions with confidence intervals."""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def proportion(successes, n: int | None = None, confidence: float = 0.95) -> tuple[float, float, float]:
    """(fraction, low, high): a fraction with its Wilson score interval.

    ``successes`` is a count (then give ``n``) or an array of booleans.
    """
    if n is None:
        flags = np.asarray(successes, bool)
        successes, n = int(flags.sum()), flags.size
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    ci = binomtest(int(successes), n).proportion_ci(confidence_level=confidence, method="wilson")
    return successes / n, float(ci.low), float(ci.high)


def format_proportion(successes, n: int | None = None, confidence: float = 0.95) -> str:
    """'0.812 [0.713, 0.883]': a fraction and its Wilson interval, rounded to 3 decimals."""
    p, lo, hi = proportion(successes, n, confidence)
    return f"{p:.3f} [{lo:.3f}, {hi:.3f}]"
