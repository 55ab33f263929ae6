"""Statistics for accuracy numbers: intervals, a paired test, and inter-judge agreement.

Small exact implementations (standard library and numpy), so no SciPy/statsmodels/
krippendorff dependency: each is a few lines and is checked against hand-computed values
(tests/test_accuracy_stats.py, the design brief's 10-item, 3-judge oracle).

Rating matrices are ``ratings[judge][item]``: a category (any hashable, e.g. "correct") or
None for a missing vote (abstention, parse failure, error).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from statistics import NormalDist

import numpy as np

Rating = Hashable | None


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its interval and the n it rests on."""

    value: float | None
    low: float | None
    high: float | None
    n: int


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for a proportion (good at small n and near 0 or 1)."""
    if n <= 0:
        return Interval(None, None, None, 0)
    z = _z(level)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 and n the bounds are exactly 0 and 1 (floating point leaves ~1e-17 otherwise).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, n)


def bootstrap_mean(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> Interval:
    """Mean with a seeded percentile-bootstrap interval (for F1/ROUGE means)."""
    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0)
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if n == 1:
        return Interval(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean, float(low), float(high), n)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (b: only A right, c: only
    B right): a binomial test of b against Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_counts(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """Discordant pairs of two models' correctness on the same items: (A only, B only)."""
    return (sum(x and not y for x, y in zip(a, b, strict=True)),
            sum(y and not x for x, y in zip(a, b, strict=True)))


def cohen_kappa(a: Sequence[Rating], b: Sequence[Rating]) -> tuple[float | None, int]:
    """Cohen's κ of two raters over the items both rated; returns (κ, n). κ is None when
    undefined (no common items, or chance agreement 1)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    n = len(pairs)
    if n == 0:
        return None, 0
    observed = sum(x == y for x, y in pairs) / n
    count_a = Counter(x for x, _ in pairs)
    count_b = Counter(y for _, y in pairs)
    expected = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if expected == 1:
        return None, n
    return (observed - expected) / (1 - expected), n


def fleiss_kappa(ratings: Sequence[Sequence[Rating]]) -> tuple[float | None, int]:
    """Fleiss' κ over the items every rater rated; returns (κ, n items)."""
    if len(ratings) < 2:
        return None, 0
    raters = len(ratings)
    items = [column for column in zip(*ratings, strict=True)
             if all(v is not None for v in column)]
    n_items = len(items)
    if n_items == 0:
        return None, 0
    per_item = [Counter(column) for column in items]
    p_bar = sum((sum(v * v for v in counts.values()) - raters) / (raters * (raters - 1))
                for counts in per_item) / n_items
    totals: Counter[Hashable] = Counter()
    for counts in per_item:
        totals.update(counts)
    p_e = sum((t / (n_items * raters)) ** 2 for t in totals.values())
    if p_e == 1:
        return None, n_items
    return (p_bar - p_e) / (1 - p_e), n_items


def krippendorff_alpha_nominal(ratings: Sequence[Sequence[Rating]]) -> tuple[float | None, int]:
    """Krippendorff's α for nominal data, missing votes allowed; returns (α, pairable values).

    Coincidence matrix: every unit with m ≥ 2 values adds 1/(m-1) per ordered pair of its
    values; α = 1 - (n-1)·Σ_{c≠k} o_ck / Σ_{c≠k} n_c·n_k.
    """
    coincidence: defaultdict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for column in zip(*ratings, strict=True):
        values = [v for v in column if v is not None]
        m = len(values)
        if m < 2:
            continue
        for i, x in enumerate(values):
            for j, y in enumerate(values):
                if i != j:
                    coincidence[(x, y)] += 1 / (m - 1)
    marginals: defaultdict[Hashable, float] = defaultdict(float)
    for (x, _), weight in coincidence.items():
        marginals[x] += weight
    n = round(sum(marginals.values()))
    if n <= 1:
        return None, n
    observed = sum(w for (x, y), w in coincidence.items() if x != y)
    expected = sum(marginals[c] * marginals[k] for c in marginals for k in marginals if c != k)
    if expected == 0:
        return None, n
    return 1 - (n - 1) * observed / expected, n
