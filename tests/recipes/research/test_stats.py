"""Student's t quantiles against a printed table, and paired intervals against hand computations."""

import pytest

from gptzoo.recipes.research.sweep.stats import PairedDifference, paired_difference, t_cdf, t_quantile


@pytest.mark.parametrize("df, quantile", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (120, 1.980)])
def test_t_quantiles_match_the_printed_table(df, quantile):
    assert t_quantile(0.975, df) == pytest.approx(quantile, abs=5e-4)  # two-sided 95%, from any statistics textbook


def test_t_cdf_is_symmetric_and_cauchy_at_one_degree():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # the Cauchy distribution: 1/2 + arctan(1)/π
    assert t_cdf(-2.0, 7) == pytest.approx(1 - t_cdf(2.0, 7))


def test_paired_interval_by_hand():
    # differences 0.1, 0.2, 0.05: mean 0.116667, sample std sqrt(0.011667 / 2) = 0.076376,
    # standard error 0.076376 / √3 = 0.044096, t(0.975, 2) = 4.302653 -> half width 0.189729.
    d = paired_difference({0: 3.0, 1: 3.2, 2: 3.1}, {0: 2.9, 1: 3.0, 2: 3.05})
    assert d.n == 3 and d.mean == pytest.approx(0.116667, abs=1e-6)
    assert (d.low, d.high) == (pytest.approx(-0.073062, abs=1e-5), pytest.approx(0.306396, abs=1e-5))
    assert not d.excludes_zero
    # differences 0.10, 0.12, 0.11: mean 0.11, std 0.01, half width 4.302653 × 0.01 / √3 = 0.024841.
    d = paired_difference({0: 1.10, 1: 1.12, 2: 1.11, 7: 9.0}, {0: 1.0, 1: 1.0, 2: 1.0})  # seed 7 has no base run
    assert d.n == 3 and (d.low, d.high) == (pytest.approx(0.085159, abs=1e-5), pytest.approx(0.134841, abs=1e-5))
    assert d.excludes_zero


def test_no_interval_with_fewer_than_three_seeds():
    d = paired_difference({0: 2.0, 1: 2.2}, {0: 1.9, 1: 2.4})
    assert d == PairedDifference(2, pytest.approx(-0.05), None, None) and not d.excludes_zero
    assert paired_difference({}, {0: 1.0}) == PairedDifference(0, None)
