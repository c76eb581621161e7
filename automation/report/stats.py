"""The statistics of a report: two proportions compared, and whether the data is enough to call a winner.

Pure functions of counts (no database, no clock):

* ``normal_cdf(z)``: the standard normal distribution function, from ``math.erf``.
* ``compare(x1, n1, x2, n2)``: arm 1 (treatment, a variant) against arm 2 (holdout, control, the other
  variants pooled): both rates, the absolute and relative lift, a 95% confidence interval of the
  difference (Wald, unpooled standard error), the z statistic and two-sided p-value of the pooled
  two-proportion z-test, the sample per arm the power rule asks for, and a verdict.

The "enough data" rule (``verdict``): a winner is named only when

1. both arms have at least ``MIN_OUTCOMES`` conversions and ``MIN_OUTCOMES`` non-conversions (the normal
   approximation behind the z-test holds),
2. the smaller arm has at least the sample a two-sided test at alpha = 0.05 needs to find the observed
   difference with 80% power (``required_per_arm``: the usual formula for two proportions with equal
   arms; requiring it of the smaller arm is conservative when the arms differ in size), and
3. p < 0.05.

Otherwise the verdict says which of them is missing; an underpowered sample is never called a winner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
#: Quantiles of the standard normal distribution: 1 - alpha/2 (two-sided 5%) and 0.8 (80% power).
Z_ALPHA = 1.959963984540054
Z_POWER = 0.8416212335729143
MIN_OUTCOMES = 5


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def required_per_arm(p1: float, p2: float) -> int | None:
    """Sample per arm to detect ``p1`` against ``p2`` (two-sided alpha 0.05, power 0.8); None when equal.

    n = (z_a * sqrt(2 pbar (1 - pbar)) + z_b * sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / (p1 - p2)^2,
    with pbar the mean of the two rates.
    """
    if p1 == p2:
        return None
    pbar = (p1 + p2) / 2
    root = Z_ALPHA * math.sqrt(2 * pbar * (1 - pbar)) + Z_POWER * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root * root / ((p1 - p2) ** 2))


@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` (x_a of n_a converted) against arm ``b``."""

    x_a: int
    n_a: int
    x_b: int
    n_b: int
    rate_a: float | None
    rate_b: float | None
    lift: float | None  # rate_a - rate_b
    relative_lift: float | None  # lift / rate_b
    ci_low: float | None  # 95% confidence interval of lift
    ci_high: float | None
    z: float | None
    p_value: float | None
    required: int | None  # per arm, by the power rule
    enough: bool  # the rule holds: a winner may be named
    verdict: str

    def as_json(self) -> dict[str, Any]:
        return {
            "converted": self.x_a,
            "entries": self.n_a,
            "rate": _round(self.rate_a),
            "baseline_converted": self.x_b,
            "baseline_entries": self.n_b,
            "baseline_rate": _round(self.rate_b),
            "lift": _round(self.lift),
            "relative_lift": _round(self.relative_lift),
            "ci95": [_round(self.ci_low), _round(self.ci_high)],
            "z": _round(self.z),
            "p_value": _round(self.p_value),
            "required_per_arm": self.required,
            "enough_data": self.enough,
            "verdict": self.verdict,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def compare(x_a: int, n_a: int, x_b: int, n_b: int, a: str = "treatment", b: str = "holdout") -> Comparison:
    """``a`` (x_a conversions of n_a) against ``b`` (x_b of n_b); ``a``/``b`` name the arms in the verdict."""
    rate_a = x_a / n_a if n_a else None
    rate_b = x_b / n_b if n_b else None
    if rate_a is None or rate_b is None:
        missing = a if rate_a is None else b
        return Comparison(
            x_a,
            n_a,
            x_b,
            n_b,
            rate_a,
            rate_b,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            False,
            f"no {missing} entries in the period: nothing to compare",
        )
    lift = rate_a - rate_b
    relative = lift / rate_b if rate_b else None
    se = math.sqrt(rate_a * (1 - rate_a) / n_a + rate_b * (1 - rate_b) / n_b)
    ci_low, ci_high = lift - Z_ALPHA * se, lift + Z_ALPHA * se
    pooled = (x_a + x_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se_pooled > 0:
        z: float | None = lift / se_pooled
        p_value: float | None = 2 * (1 - normal_cdf(abs(lift / se_pooled)))
    else:  # nobody or everybody converted in both arms
        z, p_value = None, None
    required = required_per_arm(rate_a, rate_b)
    enough, verdict = _verdict(x_a, n_a, x_b, n_b, lift, p_value, required, a, b)
    return Comparison(
        x_a,
        n_a,
        x_b,
        n_b,
        rate_a,
        rate_b,
        lift,
        relative,
        ci_low,
        ci_high,
        z,
        p_value,
        required,
        enough,
        verdict,
    )


def _verdict(
    x_a: int,
    n_a: int,
    x_b: int,
    n_b: int,
    lift: float,
    p_value: float | None,
    required: int | None,
    a: str,
    b: str,
) -> tuple[bool, str]:
    """(a winner may be named, a plain sentence) by the rule in the module docstring."""
    points = f"{abs(lift) * 100:.2f} points"
    few = [name for name, x, n in ((a, x_a, n_a), (b, x_b, n_b)) if min(x, n - x) < MIN_OUTCOMES]
    if few:
        return False, (
            f"not enough data: {' and '.join(few)} {'need' if len(few) > 1 else 'needs'} at least "
            f"{MIN_OUTCOMES} conversions and {MIN_OUTCOMES} non-conversions"
        )
    if required is None or p_value is None:
        return False, f"no difference between {a} and {b}"
    smaller = min(n_a, n_b)
    if smaller < required:
        return False, (
            f"not enough data: a difference of {points} needs {required:,} entries per arm "
            f"(80% power, alpha 0.05); the smaller arm has {smaller:,}"
        )
    if p_value >= ALPHA:
        return False, f"no significant difference between {a} and {b} (p = {p_value:.3f})"
    better, worse = (a, b) if lift > 0 else (b, a)
    return True, f"{better} converts better than {worse} by {points} (p = {p_value:.4f})"
