"""Small statistics the chapters share, from scipy: proportions with Wilson intervals, bootstrap intervals clustered
by prompt, and paired tests (McNemar's exact test on paired successes; a paired bootstrap of a mean difference)."""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, bootstrap

CONFIDENCE = 0.95


def wilson(successes) -> tuple[float, float, float]:
    """(fraction, low, high) of a boolean array, with its 95% Wilson score interval."""
    if (flags := np.asarray(successes, bool).ravel()).size == 0:
        raise ValueError("a proportion needs at least one trial")
    ci = binomtest(int(flags.sum()), flags.size).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(flags.mean()), float(ci.low), float(ci.high)


def cluster_bootstrap(values, clusters=None, seed: int = 0, n: int = 2000) -> tuple[float, float, float]:
    """(mean, low, high): the mean with a 95% percentile bootstrap interval resampling whole ``clusters`` (e.g. the
    prompt of each value); None: each value is its own cluster."""
    values = np.asarray(values, float).ravel()
    clusters = np.arange(values.size) if clusters is None else np.asarray(clusters).ravel()
    if values.size == 0 or clusters.size != values.size:
        raise ValueError(f"need one cluster label per value, got {values.size} values and {clusters.size} labels")
    ids, index = np.unique(clusters, return_inverse=True)
    sums, counts = np.bincount(index, values), np.bincount(index).astype(float)
    if len(ids) < 2 or np.ptp(sums / counts) == 0:
        return (float(values.mean()),) * 3
    res = bootstrap((np.arange(len(ids)),), lambda i: sums[i].sum() / counts[i].sum(), n_resamples=n,
                    confidence_level=CONFIDENCE, method="percentile", random_state=seed, vectorized=False)
    return float(values.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference(a, b, clusters=None, seed: int = 0) -> tuple[float, float, float]:
    """(mean of a - b, low, high): a paired difference with its clustered bootstrap interval."""
    if (a := np.asarray(a, float)).shape != (b := np.asarray(b, float)).shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    return cluster_bootstrap(a - b, clusters, seed)


def mcnemar(a, b) -> float:
    """Two-sided exact McNemar p-value for paired successes ``a`` and ``b`` (bool arrays, one entry per image):
    only the discordant pairs count."""
    if (a := np.asarray(a, bool).ravel()).shape != (b := np.asarray(b, bool).ravel()).shape:
        raise ValueError(f"paired successes need the same length, got {a.size} and {b.size}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b).pvalue)


def fmt(estimate: tuple[float, float, float], digits: int = 3) -> str:
    """'0.812 [0.713, 0.883]'."""
    return f"{estimate[0]:.{digits}f} [{estimate[1]:.{digits}f}, {estimate[2]:.{digits}f}]"


def p_text(p: float) -> str:
    """'p < 0.001' or 'p = 0.219', as the chapters write a p-value."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
