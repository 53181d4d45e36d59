"""Statistics over training seeds: t intervals, Welch's t-test, the smallest detectable difference.

Everything works on `Spread` (n, mean, sample sd), so rows known only by their mean and sd count as
well as rows with every seed's value. The t distribution's CDF is the regularized incomplete beta
function (continued fraction, as in Numerical Recipes' `betacf`); its quantiles are found by
bisection. Standard library only.

    row interval      mean ± t(0.975, n - 1) * sd / sqrt(n)
    Welch's test      d = mean_a - mean_b, se = sqrt(sd_a^2 / n_a + sd_b^2 / n_b),
                      df = se^4 / ((sd_a^2 / n_a)^2 / (n_a - 1) + (sd_b^2 / n_b)^2 / (n_b - 1))
                      (Welch-Satterthwaite), t = d / se, p = 2 * P(T_df > |t|), interval d ± t(0.975, df) * se
    detectable        (t(0.975, df) + t(0.80, df)) * se: the difference a two-sided test at alpha 0.05
                      finds with power 0.8, given these sds and seed counts
    verdict           "held": p < 0.05 and d has the claimed sign (a claim of "a difference" takes
                      either sign); "did not hold": p < 0.05 and the opposite sign; otherwise
                      "could not be told apart"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

ALPHA = 0.05
POWER = 0.8
HELD, NOT_HELD, UNCLEAR = "held", "did not hold", "could not be told apart"
VERDICT_RULE = (f"{HELD}: p < {ALPHA:g} and the difference has the claimed sign; {NOT_HELD}: p < {ALPHA:g} "
                f"with the opposite sign; {UNCLEAR}: p >= {ALPHA:g}")


@dataclass(frozen=True)
class Spread:
    """n values summarized: their mean and sample standard deviation (0 for one value)."""
    n: int
    mean: float
    sd: float

    @classmethod
    def of(cls, values: Iterable[float]) -> "Spread":
        values = [float(v) for v in values]
        if not values:
            raise ValueError("no values")
        mean = math.fsum(values) / len(values)
        if len(values) == 1:
            return cls(1, mean, 0.0)
        return cls(len(values), mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)))

    def pooled(self, other: "Spread") -> "Spread":
        """The spread of both sets of values together (exact, from the moments)."""
        n = self.n + other.n
        mean = (self.n * self.mean + other.n * other.mean) / n
        squares = sum((s.n - 1) * s.sd ** 2 + s.n * (s.mean - mean) ** 2 for s in (self, other))
        return Spread(n, mean, math.sqrt(squares / (n - 1)) if n > 1 else 0.0)

    def interval(self, level: float = 1 - ALPHA) -> tuple[float, float] | None:
        """The t interval of the mean, or None for one value."""
        if self.n < 2:
            return None
        half = t_ppf(0.5 + level / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half


# --- the t distribution ------------------------------------------------------------------------

def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1; `y` is
    1 - x where the caller knows it more precisely than the subtraction would."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    y = 1.0 - x if y is None else y
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):  # where the fraction converges fast; else use the symmetry
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, y) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if t == 0.0:
        return 0.5
    # P(T > |t|) = I_x(df / 2, 1 / 2) / 2 with x = df / (df + t^2); near t = 0 the other tail is
    # the precise one: P(|T| < |t|) = I_(1 - x)(1 / 2, df / 2)
    x, y = df / (df + t * t), t * t / (df + t * t)
    tail = 0.5 * betainc(df / 2.0, 0.5, x, y) if x < 0.5 else 0.5 * (1.0 - betainc(0.5, df / 2.0, y, x))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The t value with P(T <= t) = q (bisection on t_cdf)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > q:
        lo *= 2.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2.0


# --- comparing two rows ------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """Row a against row b (Welch's t-test); `sign` is the claimed sign of a - b (0: either)."""
    difference: float
    se: float
    df: float | None  # None where neither row varies (or a row has one seed): no test
    t: float | None
    p: float | None
    interval: tuple[float, float] | None
    detectable: float | None  # the smallest difference found with power POWER at ALPHA
    verdict: str


def verdict(difference: float, p: float | None, sign: int) -> str:
    """The verdict word of a difference and its p-value (VERDICT_RULE)."""
    if p is None or p >= ALPHA:
        return UNCLEAR
    return HELD if sign == 0 or difference * sign > 0 else NOT_HELD


def welch(a: Spread, b: Spread, sign: int = 1) -> Comparison:
    """Welch's t-test of mean(a) - mean(b); see the module doc for every formula."""
    difference = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Comparison(difference, math.nan, None, None, None, None, None, UNCLEAR)
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # both rows the same in every seed: nothing to test against
        return Comparison(difference, 0.0, None, None, None, None, None, UNCLEAR)
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    t = difference / se
    p = min(1.0, 2.0 * t_cdf(-abs(t), df))
    critical = t_ppf(1 - ALPHA / 2, df)
    return Comparison(difference, se, df, t, p, (difference - critical * se, difference + critical * se),
                      (critical + t_ppf(POWER, df)) * se, verdict(difference, p, sign))
