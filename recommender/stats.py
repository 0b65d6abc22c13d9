"""Statistics of the panel's clicks: rates with confidence intervals and the A/B verdict.

Pure Python (no Django, no SciPy): a click-through rate is a binomial proportion, clicks out of
panel views, so its interval is Wilson's score interval (sound near 0, where CTRs live, unlike the
normal approximation), and two arms are compared by the two-proportion z-test with a pooled
variance. The verdict is a fixed-horizon test read at each look: it says "not enough data yet"
until both arms have MIN_VIEWS views, MIN_CLICKS clicks in all and MIN_EXPECTED clicks expected in
each, which keeps the early, noisy looks (where peeking inflates false positives most) from
declaring a winner. Two simplifications, stated in the README: the unit is a panel view, though
visitors are what is assigned (one visitor's views are not independent, so the interval is
narrower than it should be when visitors see many panels), and repeated looks are not corrected
(a sequential test would be).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # two-sided 95%
# Below these the normal approximation behind the z-test is poor (n*p >= 5 in each arm needs ~10
# clicks when the CTR is a few per cent) and one look says little.
MIN_VIEWS = 200
MIN_CLICKS = 20
MIN_EXPECTED = 5  # clicks (and non-clicks) expected in each arm under "no difference"


def wilson_interval(successes: int, trials: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval of ``successes / trials`` (0 to 1 with no trials)."""
    if trials <= 0:
        return 0.0, 1.0
    successes = min(max(successes, 0), trials)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def normal_sf(x: float) -> float:
    """P(Z > x) for a standard normal Z."""
    return 0.5 * math.erfc(x / math.sqrt(2))


@dataclass(frozen=True)
class Comparison:
    rate_a: float
    rate_b: float
    z: float
    p_value: float  # two-sided
    verdict: str  # what the dashboard says
    winner: str  # "a", "b" or "" (no clear difference, or not enough data)


def two_proportions(*, clicks_a: int, views_a: int, clicks_b: int, views_b: int, alpha: float = 0.05) -> Comparison:
    """Arm B against arm A: pooled two-proportion z-test and a plain verdict."""
    clicks_a, clicks_b = min(clicks_a, views_a), min(clicks_b, views_b)  # a rate of views with a click
    rate_a = clicks_a / views_a if views_a else 0.0
    rate_b = clicks_b / views_b if views_b else 0.0
    pooled = (clicks_a + clicks_b) / (views_a + views_b) if views_a + views_b else 0.0
    expected = min(views_a, views_b) * min(pooled, 1 - pooled)  # the z-test's validity: >= 5 in each arm
    if min(views_a, views_b) < MIN_VIEWS or clicks_a + clicks_b < MIN_CLICKS or expected < MIN_EXPECTED:
        return Comparison(rate_a, rate_b, 0.0, 1.0, "Not enough data yet", "")
    se = math.sqrt(pooled * (1 - pooled) * (1 / views_a + 1 / views_b))
    z = (rate_b - rate_a) / se if se > 0 else 0.0
    p_value = min(1.0, 2 * normal_sf(abs(z)))
    confidence = round(100 * (1 - alpha))
    if p_value < alpha:
        winner = "b" if z > 0 else "a"
        verdict = f"{winner.upper()} ahead, {confidence}% confident"
    else:
        winner, verdict = "", f"No clear difference yet (p = {p_value:.2f})"
    return Comparison(rate_a, rate_b, z, p_value, verdict, winner)
