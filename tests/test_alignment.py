"""The alignment verdicts on fake per-pass rates: equivalent, faster/slower, inconclusive with
the difference it could not rule out, the family-wise adjustment, and the sweep's sentence."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from b3core.studies.alignment import (
    DEFAULT_MARGIN,
    compare_neighbours,
    comparison_frame,
    relative_verdict,
    verdict,
)

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

PASSES = 8


def rates_with(effect_at_128: float, pass_noise: float = 0.005, seed: int = 0):
    """Samples/s per pass: each pass moves every size alike (drift, which pairing cancels),
    plus `pass_noise` of its own per size."""
    rng = np.random.default_rng(seed)
    drift = rng.normal(0, 0.10, PASSES)
    base = {127: 1000, 128: 1000 * (1 + effect_at_128), 129: 1000, 64: 500, 65: 500, 96: 800}
    base[97] = 800
    return {
        size: list(rate * np.exp(drift + rng.normal(0, pass_noise, PASSES)))
        for size, rate in base.items()
    }


def test_equal_sizes_are_equivalent_within_the_margin_despite_the_drift():
    comparisons = compare_neighbours(rates_with(0.0))
    assert len(comparisons) == 4 and {c.verdict for c in comparisons} == {"equivalent"}
    sentence = verdict(comparisons)
    assert sentence.startswith("On this device 64, 128 ran as fast as their neighbours")
    assert "equivalent within ±2%" in sentence and "did not matter" not in sentence
    assert set(comparison_frame(comparisons)["verdict"]) == {"equivalent"}


def test_a_planted_ten_percent_advantage_is_faster_with_its_interval():
    comparisons = compare_neighbours(rates_with(0.10))
    at_128 = [c for c in comparisons if c.aligned == 128]
    assert len(at_128) == 2 and all(c.verdict == "faster" for c in at_128)
    assert all(1.05 < c.ci_low < c.ratio < c.ci_high < 1.15 for c in at_128)
    sentence = verdict(comparisons)
    assert "2 of 3 faster (largest: 128 vs 12" in sentence and "1 of 3 equivalent" in sentence
    slower = compare_neighbours(rates_with(-0.10))
    assert {c.verdict for c in slower if c.aligned == 128} == {"slower"}
    assert "2 of 3 slower" in verdict(slower)


def test_wide_noise_is_inconclusive_and_names_what_it_could_not_rule_out():
    comparisons = compare_neighbours(rates_with(0.0, pass_noise=0.10, seed=1))
    unsure = [c for c in comparisons if c.verdict == "inconclusive"]
    assert unsure
    for c in unsure:
        assert c.not_ruled_out == pytest.approx(max(c.ci_high - 1, 1 - c.ci_low))
        assert f"up to {100 * c.not_ruled_out:.1f}%" in c.describe()
    widest = max(c.not_ruled_out for c in unsure)
    sentence = verdict(comparisons)
    assert f"differences up to {100 * widest:.0f}% could not be ruled out" in sentence
    assert "did not matter" not in sentence


def test_each_interval_is_adjusted_for_the_number_of_comparisons():
    """Four comparisons: each interval is the t interval at 1 - 0.05/4 (Bonferroni), so that
    the four hold jointly at 95%."""
    rates = rates_with(0.0, pass_noise=0.03, seed=2)
    comparisons = compare_neighbours(rates)
    c = comparisons[0]
    logs = np.log(rates[c.aligned]) - np.log(rates[c.neighbour])
    half = sps.t.ppf(1 - 0.05 / 4 / 2, PASSES - 1) * logs.std(ddof=1) / math.sqrt(PASSES)
    assert c.confidence == pytest.approx(1 - 0.05 / 4)
    assert math.log(c.ci_high) - math.log(c.ratio) == pytest.approx(half)


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.99, 1.01, "equivalent"),
        (1.005, 1.015, "equivalent"),  # significant, but within the margin
        (1.03, 1.05, "faster"),
        (0.90, 0.97, "slower"),
        (1.01, 1.05, "inconclusive"),  # a difference, perhaps not one that matters
        (0.97, 1.03, "inconclusive"),
    ],
)
def test_the_verdict_of_an_interval(low, high, expected):
    assert relative_verdict(low, high, DEFAULT_MARGIN) == expected


def test_a_sweep_without_neighbours_says_so():
    comparisons = compare_neighbours({100: [1.0, 1.1], 128: [2.0, 2.1], 156: [1.5, 1.4]})
    assert comparisons == []
    assert "No power of two" in verdict(comparisons)
