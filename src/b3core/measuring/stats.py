"""Statistics of repeated timings: raw values kept, everything else derived lazily."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import stats as sps

# torch.utils.benchmark's threshold for a noisy measurement.
NOISY_IQR_FRACTION = 0.10


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

    @property
    def cv(self) -> float:
        return self.sd / self.mean if self.mean else float("nan")

    def to_dict(self) -> dict[str, float]:
        d = dict(self.__dict__)
        d["iqr"] = self.iqr
        return d


def summarize(values: Sequence[float]) -> Summary:
    """Mean, SD (n-1), quartiles and a two-sided 95% Student-t interval for the mean."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("cannot summarize an empty sample")
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    if x.size > 1 and sd > 0:
        half = float(sps.t.ppf(0.975, x.size - 1) * sd / np.sqrt(x.size))
    else:
        half = float("nan") if x.size < 2 else 0.0
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
        ci95_low=mean - half,
        ci95_high=mean + half,
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
class Measurement:
    """Raw per-repeat times of one step (seconds), and what each step processed."""

    times: tuple[float, ...]
    samples_per_step: int

    @cached_property
    def time(self) -> Summary:
        return summarize(self.times)

    @cached_property
    def samples_per_second(self) -> Summary:
        return summarize([self.samples_per_step / t for t in self.times])

    @cached_property
    def iterations_per_second(self) -> Summary:
        return summarize([1.0 / t for t in self.times])

    @cached_property
    def outliers(self) -> list[int]:
        return tukey_outliers(self.times)

    @cached_property
    def noisy(self) -> bool:
        """IQR above torch.utils.benchmark's 10% of the median (with 3 or more repeats)."""
        return len(self.times) >= 3 and self.time.iqr > NOISY_IQR_FRACTION * self.time.median

    @cached_property
    def warnings(self) -> list[str]:
        notes = []
        if len(self.times) < 3:
            notes.append(f"only {len(self.times)} repeat(s): dispersion is not meaningful")
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
            "times_s": list(self.times),
            "samples_per_step": self.samples_per_step,
            "time_s": self.time.to_dict(),
            "samples_per_s": self.samples_per_second.to_dict(),
            "iterations_per_s": self.iterations_per_second.to_dict(),
            "outliers": self.outliers,
            "warnings": self.warnings,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Measurement:
        return cls(tuple(float(t) for t in d["times_s"]), int(d["samples_per_step"]))


def difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95):
    """Welch's interval for mean(a) - mean(b); returns (diff, low, high, p_value)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = float(np.sqrt(va + vb))
    if se == 0:
        return diff, diff, diff, (1.0 if diff == 0 else 0.0)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, dof) * se)
    p = float(2 * sps.t.sf(abs(diff) / se, dof))
    return diff, diff - half, diff + half, p


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], seed: int = 0):
    """Median of per-pair ratios with a 95% bootstrap interval: (median, low, high).

    Pairs come from interleaved rounds, so slow drift of the machine cancels within each pair.
    """
    ratios = np.asarray(numerator, float) / np.asarray(denominator, float)
    result = sps.bootstrap(
        (ratios,),
        np.median,
        confidence_level=0.95,
        n_resamples=2000,
        method="percentile",
        random_state=seed,
    )
    interval = result.confidence_interval
    return float(np.median(ratios)), float(interval.low), float(interval.high)
