"""Confidence intervals a CI gate can trust, over plain sequences of values.

Every function takes arrays (numpy or any sequence), so it works over whatever stores the
records (a pandas group, an Arrow column, a streamed sample).

- ``percentile_ci``: 95 % interval of a percentile by the bootstrap (seeded, so a report is
  reproducible) up to ``BOOTSTRAP_MAX`` values; above that, the distribution-free
  order-statistic interval (the binomial ranks around n·q) the bootstrap converges to, which
  costs one partial sort instead of a thousand resamples.
- ``mean_ci``: the normal interval of a mean (mean ± z·s/√n).
- ``difference_ci``: the interval of ``new − old`` from the two runs' intervals (independent
  runs: half-widths add in quadrature).
- ``proportion_rise``: whether a rate (errors / requests) rose beyond chance (two-proportion
  normal interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054
RESAMPLES = 1000
BOOTSTRAP_MAX = 2000
SEED = 0


def _array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[~np.isnan(array)]


def percentile_ci(values: Sequence[float] | np.ndarray, q: float, *, seed: int = SEED,
                  resamples: int = RESAMPLES) -> tuple[float, float]:
    """95 % interval of the ``q``-th percentile (0..100, linear interpolation); NaN, NaN with
    fewer than 2 values."""
    data = _array(values)
    n = data.size
    if n < 2:
        return math.nan, math.nan
    if n <= BOOTSTRAP_MAX:
        rng = np.random.default_rng(seed)
        estimates = np.empty(resamples)
        chunk = max(1, 200_000 // n)  # bounded memory: chunk × n indices at a time
        for start in range(0, resamples, chunk):
            stop = min(resamples, start + chunk)
            draws = data[rng.integers(0, n, size=(stop - start, n))]
            estimates[start:stop] = np.percentile(draws, q, axis=1)
        low, high = np.percentile(estimates, [2.5, 97.5])
        return float(low), float(high)
    p = q / 100
    spread = Z95 * math.sqrt(n * p * (1 - p))
    low_rank = max(0, math.floor(n * p - spread) - 1)
    high_rank = min(n - 1, math.ceil(n * p + spread))
    ranks = np.partition(data, [low_rank, high_rank])
    return float(ranks[low_rank]), float(ranks[high_rank])


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """95 % normal interval of the mean; NaN, NaN with fewer than 2 values."""
    data = _array(values)
    if data.size < 2:
        return math.nan, math.nan
    half = Z95 * float(data.std(ddof=1)) / math.sqrt(data.size)
    mean = float(data.mean())
    return mean - half, mean + half


def difference_ci(old: float, old_ci: tuple[float, float], new: float,
                  new_ci: tuple[float, float]) -> tuple[float, float]:
    """95 % interval of ``new − old`` for two independent estimates with their intervals
    (each half-width taken as z·se; asymmetric intervals use their wider side)."""
    def half(value: float, ci: tuple[float, float]) -> float:
        return max(value - ci[0], ci[1] - value, 0.0)

    width = math.hypot(half(old, old_ci), half(new, new_ci))
    delta = new - old
    return delta - width, delta + width


def proportion_rise(old_failed: int, old_total: int, new_failed: int, new_total: int) -> bool:
    """True when the failure rate rose and the 95 % interval of the rise excludes zero."""
    if old_total <= 0 or new_total <= 0:
        return False
    p1, p2 = old_failed / old_total, new_failed / new_total
    if p2 <= p1:
        return False
    se = math.sqrt(p1 * (1 - p1) / old_total + p2 * (1 - p2) / new_total)
    return p2 - p1 - Z95 * se > 0
