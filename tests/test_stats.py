"""Statistics over seeds (mirasol.eval.stats) against hand-computed cases and closed forms."""

from __future__ import annotations

import math

import pytest

from mirasol.eval.stats import HELD, NOT_HELD, UNCLEAR, Spread, betainc, t_cdf, t_ppf, welch


@pytest.mark.parametrize("t", [-7.0, -1.3, 0.0, 0.4, 2.5, 30.0])
def test_t_cdf_matches_the_closed_forms(t):
    assert math.isclose(t_cdf(t, 1), 0.5 + math.atan(t) / math.pi, abs_tol=1e-12)  # Cauchy
    assert math.isclose(t_cdf(t, 2), 0.5 + t / (2 * math.sqrt(2 + t * t)), abs_tol=1e-12)
    x = t * t / (1 + t * t / 4)  # df = 4
    assert math.isclose(t_cdf(t, 4), 0.5 + 0.375 * (t / math.sqrt(1 + t * t / 4)) * (1 - x / 12), abs_tol=1e-12)


def test_t_quantiles_match_the_printed_table():
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert round(t_ppf(0.975, df), 3) == value
    assert round(t_ppf(0.80, 4), 3) == 0.941
    assert t_ppf(0.5, 3.7) == pytest.approx(0.0, abs=1e-9)
    assert t_ppf(0.025, 2.5) == pytest.approx(-t_ppf(0.975, 2.5))


def test_incomplete_beta_edges_and_symmetry():
    assert betainc(2.0, 3.0, 0.0) == 0.0 and betainc(2.0, 3.0, 1.0) == 1.0
    assert math.isclose(betainc(1.0, 1.0, 0.3), 0.3)  # the uniform distribution
    assert math.isclose(betainc(2.0, 3.0, 0.4) + betainc(3.0, 2.0, 0.6), 1.0)
    # I_x(2, 3) = 1 - (1 - x)^4 - 4 x (1 - x)^3, by integrating the Beta(2, 3) density
    assert math.isclose(betainc(2.0, 3.0, 0.4), 1 - 0.6 ** 4 - 4 * 0.4 * 0.6 ** 3)
    with pytest.raises(ValueError):
        betainc(1.0, 1.0, 1.5)


def test_welch_on_equal_variances_by_hand():
    # a = 1, 2, 3 and b = 4, 5, 6: means 2 and 5, both variances 1, so se = sqrt(1/3 + 1/3) = 0.8165,
    # t = -3 / 0.8165 = -3.674, df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4, and with the df = 4 closed form
    # F(3.674) = 0.5 + 0.375 * 1.7566 * (1 - 3.0857 / 12) = 0.98934: p = 2 * (1 - F) = 0.0213
    test = welch(Spread.of([1, 2, 3]), Spread.of([4, 5, 6]), sign=-1)
    assert test.difference == pytest.approx(-3.0)
    assert round(test.se, 4) == 0.8165 and round(test.t, 3) == -3.674 and test.df == pytest.approx(4.0)
    assert round(test.p, 3) == 0.021
    # interval -3 +- 2.776 * 0.8165; detectable (2.776 + 0.941) * 0.8165
    assert [round(v, 3) for v in test.interval] == [-5.267, -0.733]
    assert round(test.detectable, 2) == 3.04
    assert test.verdict == HELD
    assert welch(Spread.of([1, 2, 3]), Spread.of([4, 5, 6]), sign=1).verdict == NOT_HELD
    assert welch(Spread.of([1, 2, 3]), Spread.of([4, 5, 6]), sign=0).verdict == HELD


def test_welch_on_unequal_variances_by_hand():
    # variances 1 and 4: se^2 = 1/3 + 4/3 = 5/3, t = -4 / sqrt(5/3) = -3.098,
    # df = (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = 50/17 = 2.941; p = 0.0548 (two-sided t table
    # interpolation; scipy.stats.ttest_ind(equal_var=False) gives 0.05479)
    test = welch(Spread.of([1, 2, 3]), Spread.of([4, 6, 8]), sign=-1)
    assert round(test.t, 3) == -3.098 and round(test.df, 3) == round(50 / 17, 3)
    assert round(test.p, 3) == 0.055
    assert test.verdict == UNCLEAR  # p >= 0.05: neither held nor refuted


def test_welch_without_a_spread_decides_nothing():
    one = welch(Spread.of([0.5]), Spread.of([0.3, 0.4]))
    assert one.p is None and one.verdict == UNCLEAR and one.interval is None
    flat = welch(Spread.of([0.5, 0.5]), Spread.of([0.4, 0.4]))
    assert flat.p is None and flat.verdict == UNCLEAR and flat.difference == pytest.approx(0.1)


def test_spreads_pool_exactly_and_give_t_intervals():
    a, b = [0.41, 0.38, 0.40], [0.36, 0.44]
    pooled = Spread.of(a).pooled(Spread.of(b))
    whole = Spread.of(a + b)
    assert pooled.n == 5 and math.isclose(pooled.mean, whole.mean) and math.isclose(pooled.sd, whole.sd)
    lo, hi = Spread.of([1, 2, 3]).interval()
    assert (round(lo, 3), round(hi, 3)) == (-0.484, 4.484)  # 2 +- 4.303 / sqrt(3)
    assert Spread.of([0.7]).interval() is None and Spread.of([0.7]).sd == 0.0
