"""``automation.report.stats`` against known values and an independent computation."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from automation.report.stats import compare, normal_cdf, required_per_arm


@pytest.mark.parametrize("z", [-3.0, -1.96, -0.5, 0.0, 0.3, 1.0, 1.6448536, 1.959964, 2.5758293, 4.0])
def test_normal_cdf_matches_statistics_normaldist(z: float) -> None:
    assert normal_cdf(z) == pytest.approx(NormalDist().cdf(z), abs=1e-12)


def test_normal_cdf_known_quantiles() -> None:
    assert normal_cdf(1.959963984540054) == pytest.approx(0.975, abs=1e-12)
    assert normal_cdf(1.6448536269514722) == pytest.approx(0.95, abs=1e-12)
    assert normal_cdf(0.0) == 0.5


def test_two_proportion_z_test_known_example() -> None:
    # 45/100 against 30/100: pooled p = 0.375, z = 0.15 / sqrt(0.375 * 0.625 * 0.02) = 2.1909, p = 0.0285
    # (the same as statsmodels' proportions_ztest([45, 30], [100, 100]))
    result = compare(45, 100, 30, 100)
    assert result.z == pytest.approx(2.19089, abs=1e-5)
    assert result.p_value == pytest.approx(0.028459, abs=1e-5)
    assert result.lift == pytest.approx(0.15)
    assert result.relative_lift == pytest.approx(0.5)
    # Wald interval: 0.15 +- 1.96 * sqrt(.45 * .55 / 100 + .3 * .7 / 100) = [0.0174, 0.2826]
    assert result.ci_low == pytest.approx(0.01743, abs=1e-4)
    assert result.ci_high == pytest.approx(0.28257, abs=1e-4)


def test_compare_against_independent_formula() -> None:
    x1, n1, x2, n2 = 1320, 10000, 1200, 10000
    p1, p2, p = x1 / n1, x2 / n2, (x1 + x2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    result = compare(x1, n1, x2, n2)
    assert result.z == pytest.approx(z)
    assert result.p_value == pytest.approx(2 * (1 - NormalDist().cdf(abs(z))))
    assert result.p_value is not None and result.p_value < 0.05


def test_required_per_arm_known_value() -> None:
    # 10% against 15%, two-sided 5%, power 80%: 686 per arm (the textbook figure without continuity
    # correction, as in G*Power and Fleiss's tables)
    assert required_per_arm(0.15, 0.10) == 686
    assert required_per_arm(0.2, 0.2) is None


def test_winner_only_with_enough_data() -> None:
    big = compare(2640, 20000, 2400, 20000)  # 13.2% against 12%: 12,004 per arm needed
    assert big.required == 12004
    assert big.enough and big.verdict.startswith("treatment converts better than holdout")
    # significant (p < 0.05) but the smaller arm is below the power rule's sample: no winner
    small = compare(45, 100, 30, 100)
    assert small.p_value is not None and small.p_value < 0.05
    assert small.required is not None and small.required > 100
    assert not small.enough and small.verdict.startswith("not enough data")
    assert not compare(2, 50, 1, 50).enough  # too few conversions
    # 13.2% against 12% on 10,000 each: p = 0.011, but 12,004 per arm are needed
    underpowered = compare(1320, 10000, 1200, 10000)
    assert underpowered.p_value is not None and underpowered.p_value < 0.05 and not underpowered.enough
    assert "no holdout entries" in compare(5, 10, 0, 0).verdict
    loser = compare(2400, 20000, 2640, 20000)
    assert loser.enough and loser.verdict.startswith("holdout converts better than treatment")
    same = compare(1000, 10000, 1000, 10000)
    assert not same.enough and "no difference" in same.verdict
