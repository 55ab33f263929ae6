"""Statistics against the design brief's hand-computed 10-item, 3-judge oracle."""

from __future__ import annotations

import pytest

from pytest_fmbench.accuracy import stats

C, I = "correct", "incorrect"
J1 = [C, C, C, C, C, C, I, I, I, I]
J2 = [C, C, C, C, C, C, C, C, C, I]
J3 = [C, I, C, C, None, C, C, I, I, I]


def test_wilson_interval_of_seven_in_ten() -> None:
    interval = stats.wilson(7, 10)
    assert interval.value == 0.7 and interval.n == 10
    assert interval.low == pytest.approx(0.39678, abs=5e-6)
    assert interval.high == pytest.approx(0.89221, abs=5e-6)
    assert stats.wilson(0, 0).value is None
    assert stats.wilson(10, 10).high == 1.0


def test_cohen_kappa_pairs() -> None:
    assert stats.cohen_kappa(J1, J2) == (pytest.approx(2 / 7, abs=1e-12), 10)
    assert stats.cohen_kappa(J1, J3) == (pytest.approx(0.55, abs=1e-12), 9)
    assert stats.cohen_kappa(J2, J3) == (pytest.approx(10 / 37, abs=1e-12), 9)
    assert stats.cohen_kappa([C, C], [C, C]) == (None, 2)  # chance agreement 1: undefined


def test_fleiss_kappa_on_complete_items() -> None:
    assert stats.fleiss_kappa([J1, J2, J3]) == (pytest.approx(1 / 3, abs=1e-12), 9)


def test_krippendorff_alpha_allows_missing_votes() -> None:
    assert stats.krippendorff_alpha_nominal([J1, J2, J3]) == (pytest.approx(17 / 45, abs=1e-12), 29)


def test_mcnemar_exact() -> None:
    assert stats.mcnemar_exact(4, 0) == pytest.approx(0.125)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.paired_counts([True, True, False], [False, True, True]) == (1, 1)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    values = [0.0, 0.5, 1.0, 1.0, 0.25, 0.75]
    first = stats.bootstrap_mean(values, seed=3)
    assert first == stats.bootstrap_mean(values, seed=3)
    assert first.low is not None and first.high is not None
    assert first.low <= first.value <= first.high and first.n == 6


def test_alpha_and_fleiss_kappa_obey_their_identity_on_complete_random_data() -> None:
    """A cross-check of two independent implementations on a seeded random matrix (no missing
    votes): with complete nominal data α = κ_Fleiss + (1 - κ_Fleiss) / (N·m)."""
    import random

    rng = random.Random(7)
    matrix = [[rng.choice([C, I]) for _ in range(50)] for _ in range(3)]
    kappa, n = stats.fleiss_kappa(matrix)
    alpha, pairable = stats.krippendorff_alpha_nominal(matrix)
    assert n == 50 and pairable == 150 and kappa is not None and alpha is not None
    assert alpha == pytest.approx(kappa + (1 - kappa) / (50 * 3), abs=1e-12)
