"""The A/B verdict's statistics (recommender.stats) against known cases and by simulation."""

import random

import pytest

from recommender.stats import MIN_VIEWS, two_proportions, wilson_interval


def test_wilson_interval_matches_the_published_values():
    # 50 clicks in 1,000 views: 95% Wilson interval [0.0381, 0.0653] (Newcombe 1998's method 3).
    low, high = wilson_interval(50, 1000)
    assert low == pytest.approx(0.0381, abs=5e-5) and high == pytest.approx(0.0653, abs=5e-5)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] == pytest.approx(0.1611, abs=5e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_two_proportions_known_case():
    # A 100/1000, B 150/1000: pooled z = 0.05 / sqrt(0.125 * 0.875 * 2/1000) = 3.3806, p = 0.00072.
    result = two_proportions(clicks_a=100, views_a=1000, clicks_b=150, views_b=1000)
    assert result.z == pytest.approx(3.3806, abs=1e-3) and result.p_value == pytest.approx(0.000723, abs=2e-5)
    assert (result.winner, result.verdict) == ("b", "B ahead, 95% confident")
    reverse = two_proportions(clicks_a=150, views_a=1000, clicks_b=100, views_b=1000)
    assert (reverse.winner, reverse.verdict) == ("a", "A ahead, 95% confident")


def test_no_clear_difference_and_not_enough_data():
    close = two_proportions(clicks_a=100, views_a=1000, clicks_b=110, views_b=1000)
    assert close.winner == "" and close.verdict == "No clear difference yet (p = 0.47)"
    small = two_proportions(clicks_a=10, views_a=MIN_VIEWS - 1, clicks_b=60, views_b=MIN_VIEWS - 1)
    assert small.winner == "" and small.verdict == "Not enough data yet"


def test_an_a_a_test_declares_a_winner_about_5_percent_of_the_time():
    rng = random.Random(7)
    runs = 2000
    wins = sum(bool(two_proportions(clicks_a=rng.binomialvariate(3000, 0.04), views_a=3000,
                                    clicks_b=rng.binomialvariate(3000, 0.04), views_b=3000).winner)
               for _ in range(runs))
    assert 0.035 <= wins / runs <= 0.065


def test_a_real_lift_is_found_most_of_the_time():
    rng = random.Random(8)  # 4% -> 5% at 10,000 views an arm: power ~0.9
    runs = 500
    wins = sum(two_proportions(clicks_a=rng.binomialvariate(10_000, 0.04), views_a=10_000,
                               clicks_b=rng.binomialvariate(10_000, 0.05), views_b=10_000).winner == "b"
               for _ in range(runs))
    assert wins / runs > 0.8
