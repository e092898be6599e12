import numpy as np
import pytest
from scipy import stats as sps

from b3core.measuring.stats import (
    Measurement,
    difference_ci,
    ratio_throughput,
    summarize,
    tukey_outliers,
)

pytestmark = pytest.mark.untimed  # fake timings only


def test_summarize_matches_numpy_and_scipy():
    x = [1.0, 2.0, 3.0, 4.0, 10.0]
    s = summarize(x)
    assert s.n == 5
    assert s.mean == pytest.approx(4.0)
    assert s.sd == pytest.approx(np.std(x, ddof=1))
    assert s.median == 3.0 and (s.q1, s.q3) == (2.0, 4.0) and s.iqr == 2.0
    low, high = sps.t.interval(0.95, 4, loc=4.0, scale=sps.sem(x))
    assert (s.ci95_low, s.ci95_high) == (pytest.approx(low), pytest.approx(high))


def test_single_value_has_no_dispersion():
    s = summarize([0.5])
    assert s.mean == 0.5 and np.isnan(s.sd)


def test_tukey_outliers_marks_a_2x_spike():
    times = [0.010, 0.011, 0.0105, 0.0102, 0.0108, 0.020]
    assert tukey_outliers(times) == [5]


def test_throughput_is_total_samples_over_total_time_not_a_mean_of_rates():
    """Steps of 0.5 s and 0.25 s at 100 samples: 400 samples in 1.5 s is 266.7 samples/s.
    The mean of the per-step rates (200, 400, 200, 400) would say 300: Jensen's upward bias."""
    m = Measurement(times=(0.5, 0.25, 0.5, 0.25), samples_per_step=100)
    assert m.throughput.samples_per_s == pytest.approx(400 / 1.5)
    assert (m.throughput.samples, m.throughput.seconds) == (400, pytest.approx(1.5))
    assert m.iterations_per_second == pytest.approx(4 / 1.5)
    assert m.time.mean == pytest.approx(0.375)
    assert Measurement.from_dict(m.to_dict()) == m


def test_blocked_samples_cover_their_steps():
    """Two blocks of 5 steps of 10 samples, in 1 s and 2 s: 100 samples in 3 s."""
    m = Measurement(times=(1.0, 2.0), samples_per_step=10, steps_per_sample=5, clock="blocked")
    assert m.throughput.samples_per_s == pytest.approx(100 / 3)
    assert m.step_times == (0.2, 0.4) and m.steps == 10
    assert Measurement.from_dict(m.to_dict()) == m


def test_throughput_interval_is_scipys_bootstrap_of_the_ratio():
    rng = np.random.default_rng(1)
    times = rng.lognormal(np.log(0.01), 0.2, 40)
    rate = ratio_throughput(times, 32)
    expected = sps.bootstrap(
        (times,),
        lambda x, axis: 32 / np.mean(x, axis=axis),
        vectorized=True,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert rate.ci95 == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert rate.ci95[0] < rate.samples_per_s < rate.ci95[1]
    assert np.isnan(ratio_throughput([0.01], 32).ci95[0])  # one sample: no interval


def test_measurement_warns_when_noisy_or_too_short():
    steady = Measurement(times=(1.0, 1.01, 0.99, 1.005, 0.995), samples_per_step=1)
    noisy = Measurement(times=(1.0, 1.5, 0.7, 1.3, 0.8), samples_per_step=1)
    short = Measurement(times=(1.0, 1.1), samples_per_step=1)
    assert steady.warnings == []
    assert any("noisy" in w for w in noisy.warnings)
    assert any("timed sample" in w for w in short.warnings)


def test_difference_ci_is_welchs_test_from_scipy():
    a, b = [1.0, 2.0, 3.0, 4.5], [2.0, 3.5, 4.0, 6.0, 5.5]
    diff, low, high, p = difference_ci(a, b)
    welch = sps.ttest_ind(a, b, equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert (low, high, p) == (interval.low, interval.high, welch.pvalue)
    assert diff == pytest.approx(np.mean(a) - np.mean(b))


def test_difference_ci_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 5, 30)
    b = rng.normal(90, 5, 30)
    diff, low, high, p = difference_ci(a, b)
    assert low > 0 and p < 0.01 and low < diff < high
    diff, low, high, p = difference_ci(a, rng.normal(100, 5, 30))
    assert low < 0 < high and p > 0.05
