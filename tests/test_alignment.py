import numpy as np

from b3core.studies.alignment import compare_neighbours, comparison_frame, verdict


def rates_with(step_at_128: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        127: rng.normal(1000, 20, 20),
        128: rng.normal(1000 * (1 + step_at_128), 20, 20),
        129: rng.normal(1000, 20, 20),
        64: rng.normal(500, 10, 20),
        65: rng.normal(500, 10, 20),
        96: rng.normal(800, 10, 20),
        97: rng.normal(800, 10, 20),
    }


def test_a_real_power_of_two_advantage_is_found():
    comparisons = compare_neighbours(rates_with(0.10))
    at_128 = [c for c in comparisons if c.aligned == 128]
    assert len(at_128) == 2 and all(c.significant and c.diff > 0 for c in at_128)
    assert all(c.ci_low > 0 for c in at_128)
    assert verdict(comparisons).startswith("Powers of two mattered")


def test_no_difference_means_no_claim():
    comparisons = compare_neighbours(rates_with(0.0))
    assert not any(c.significant for c in comparisons)
    assert verdict(comparisons).startswith("Powers of two did not matter")
    assert "multiple of 8" in set(comparison_frame(comparisons)["kind"])


def test_a_sweep_without_neighbours_says_so():
    comparisons = compare_neighbours({100: [1.0, 1.1], 128: [2.0, 2.1], 156: [1.5, 1.4]})
    assert comparisons == []
    assert "No power of two" in verdict(comparisons)


def test_the_p_values_are_adjusted_for_the_number_of_comparisons():
    """Four comparisons at once: each p-value is Benjamini-Hochberg's adjusted one, never the raw
    one, so that one of four nulls reaching 0.05 by chance is not called a difference."""
    comparisons = compare_neighbours(rates_with(0.0, seed=3))
    raw = np.array([c.p_value for c in comparisons])
    adjusted = np.array([c.p_adjusted for c in comparisons])
    assert len(comparisons) == 4
    assert np.all(adjusted >= raw) and np.any(adjusted > raw)
    ranks = raw.argsort()
    m = len(raw)
    expected = np.minimum.accumulate((raw[ranks] * m / np.arange(1, m + 1))[::-1])[::-1]
    assert np.allclose(adjusted[ranks], np.minimum(expected, 1))
