"""Statistics of repeated timings: raw values kept, everything else derived lazily.

Throughput is the ratio estimator, total samples / total time (as timm and MLPerf report it),
never a mean of per-step rates: by Jensen's inequality that mean is biased upward whenever the
step times vary. Quartiles are numpy's default (linear interpolation) everywhere in b3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from b3core.spec.step import CLOCKS


def _scipy_stats():
    """scipy.stats, imported on first use: every fresh timing worker imports this module,
    and none of them needs scipy, whose import costs a good part of a second."""
    from scipy import stats

    return stats


# torch.utils.benchmark's threshold for a noisy measurement.
NOISY_IQR_FRACTION = 0.10
QUARTILES = "linear interpolation (numpy's default)"
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one sample of numbers."""

    n: int
    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    min: float
    max: float
    ci95_low: float
    ci95_high: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self) -> dict[str, float]:
        return {**self.__dict__, "iqr": self.iqr}


def summarize(values: Sequence[float]) -> Summary:
    """Mean, SD (n-1), quartiles and a two-sided 95% Student-t interval for the mean."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("cannot summarize an empty sample")
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    if x.size > 1 and sd > 0:
        sps = _scipy_stats()
        low, high = (float(v) for v in sps.t.interval(0.95, x.size - 1, mean, sps.sem(x)))
    else:
        low = high = float("nan") if x.size < 2 else mean
    q1, median, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    return Summary(
        n=int(x.size),
        mean=mean,
        sd=sd,
        median=median,
        q1=q1,
        q3=q3,
        min=float(x.min()),
        max=float(x.max()),
        ci95_low=low,
        ci95_high=high,
    )


def tukey_outliers(values: Sequence[float], k: float = 1.5) -> list[int]:
    """Indices outside [Q1 - k*IQR, Q3 + k*IQR]."""
    x = np.asarray(values, dtype=float)
    if x.size < 4:
        return []
    q1, q3 = np.percentile(x, [25, 75])
    low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    return [int(i) for i in np.flatnonzero((x < low) | (x > high))]


@dataclass(frozen=True)
class Throughput:
    """Total samples / total time, with a 95% bootstrap interval over the timed samples."""

    samples_per_s: float
    ci95: tuple[float, float]
    samples: int
    seconds: float

    def scaled(self, units_per_sample: float) -> Throughput:
        """The same rate counted in other units: tokens, for sequences of that many tokens, or
        a share of a peak FLOP/s."""
        k = units_per_sample
        return Throughput(
            self.samples_per_s * k,
            (self.ci95[0] * k, self.ci95[1] * k),
            self.samples * k,
            self.seconds,
        )

    def to_dict(self) -> dict:
        return {
            "samples_per_s": self.samples_per_s,
            "ci95": list(self.ci95),
            "samples": self.samples,
            "seconds": self.seconds,
            "estimator": "total samples / total time; 95% CI: percentile bootstrap over the "
            "timed samples",
        }


def ratio_throughput(times: Sequence[float], samples_each: int, seed: int = 0) -> Throughput:
    """Throughput of timed samples that each processed `samples_each` samples."""
    t = np.asarray(times, dtype=float)
    total = float(t.sum())
    rate = samples_each * t.size / total
    if t.size < 2 or np.ptp(t) == 0:
        ci = (float("nan"), float("nan")) if t.size < 2 else (rate, rate)
    else:
        result = _scipy_stats().bootstrap(
            (t,),
            lambda x, axis: samples_each / np.mean(x, axis=axis),
            vectorized=True,
            n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        interval = result.confidence_interval
        ci = (float(interval.low), float(interval.high))
    return Throughput(rate, ci, samples_each * int(t.size), total)


@dataclass(frozen=True)
class Measurement:
    """Raw times of one configuration, and what each timed sample covered.

    `times` are seconds per timed sample: one step with the per-step clock, a block of
    `steps_per_sample` steps with the blocked clock. Everything else is derived from them.
    """

    times: tuple[float, ...]
    samples_per_step: int
    steps_per_sample: int = 1
    clock: str = "per-step"

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r}")

    @cached_property
    def step_times(self) -> tuple[float, ...]:
        """Seconds per step: each sample's time over its steps (a block's mean step)."""
        return tuple(t / self.steps_per_sample for t in self.times)

    @cached_property
    def time(self) -> Summary:
        return summarize(self.step_times)

    @cached_property
    def throughput(self) -> Throughput:
        return ratio_throughput(self.times, self.samples_per_step * self.steps_per_sample)

    @property
    def steps(self) -> int:
        return len(self.times) * self.steps_per_sample

    @property
    def iterations_per_second(self) -> float:
        return self.steps / sum(self.times)

    @cached_property
    def outliers(self) -> list[int]:
        return tukey_outliers(self.times)

    @cached_property
    def noisy(self) -> bool:
        """IQR above torch.utils.benchmark's 10% of the median (with 3 or more samples)."""
        return len(self.times) >= 3 and self.time.iqr > NOISY_IQR_FRACTION * self.time.median

    @cached_property
    def warnings(self) -> list[str]:
        notes = []
        if len(self.times) < 3:
            notes.append(f"only {len(self.times)} timed sample(s): dispersion is not meaningful")
        elif self.noisy:
            notes.append(
                f"noisy: IQR is {self.time.iqr / self.time.median:.0%} of the median "
                f"(above {NOISY_IQR_FRACTION:.0%}); compare medians"
            )
        if self.outliers:
            notes.append(f"{len(self.outliers)} outlier(s) beyond 1.5 IQR")
        return notes

    def to_dict(self) -> dict:
        return {
            "clock": self.clock,
            "times_s": list(self.times),
            "steps_per_sample": self.steps_per_sample,
            "samples_per_step": self.samples_per_step,
            "step_time_s": self.time.to_dict(),
            "quartiles": QUARTILES,
            "outliers": self.outliers,
            "warnings": self.warnings,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Measurement:
        """Raw fields only."""
        return cls(
            tuple(float(t) for t in d["times_s"]),
            int(d["samples_per_step"]),
            int(d.get("steps_per_sample", 1)),
            d["clock"],
        )


def difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95):
    """Welch's interval for mean(a) - mean(b); returns (diff, low, high, p_value)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return diff, diff, diff, (1.0 if diff == 0 else 0.0)
    test = _scipy_stats().ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(confidence)
    return diff, float(interval.low), float(interval.high), float(test.pvalue)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], seed: int = 0):
    """Median of per-pair ratios with a 95% bootstrap interval: (median, low, high).

    Pairs come from interleaved rounds, so slow drift of the machine cancels within each pair.
    """
    ratios = np.asarray(numerator, float) / np.asarray(denominator, float)
    result = _scipy_stats().bootstrap(
        (ratios,),
        np.median,
        confidence_level=0.95,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return float(np.median(ratios)), float(interval.low), float(interval.high)
