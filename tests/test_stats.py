import numpy as np
import pytest
from scipy import stats as sps

from b3core.measuring.stats import Measurement, difference_ci, summarize, tukey_outliers


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


def test_measurement_derives_throughput_from_raw_times():
    m = Measurement(times=(0.5, 0.25, 0.5, 0.25), samples_per_step=100)
    assert m.samples_per_second.mean == pytest.approx(300.0)
    assert m.iterations_per_second.mean == pytest.approx(3.0)
    assert m.time.mean == pytest.approx(0.375)
    assert Measurement.from_dict(m.to_dict()) == m


def test_measurement_warns_when_noisy_or_too_short():
    steady = Measurement(times=(1.0, 1.01, 0.99, 1.005, 0.995), samples_per_step=1)
    noisy = Measurement(times=(1.0, 1.5, 0.7, 1.3, 0.8), samples_per_step=1)
    short = Measurement(times=(1.0, 1.1), samples_per_step=1)
    assert steady.warnings == []
    assert any("noisy" in w for w in noisy.warnings)
    assert any("repeat" in w for w in short.warnings)


def test_difference_ci_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 5, 30)
    b = rng.normal(90, 5, 30)
    diff, low, high, p = difference_ci(a, b)
    assert low > 0 and p < 0.01 and low < diff < high
    diff, low, high, p = difference_ci(a, rng.normal(100, 5, 30))
    assert low < 0 < high and p > 0.05
