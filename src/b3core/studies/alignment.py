"""Do powers of two (or multiples of 8) matter? Each aligned size in a sweep is compared with
its neighbours B-1 and B+1 on samples/s, paired by pass (a sweep's passes run every size once,
in a shuffled order, so each pass's drift cancels in its ratios).

Each comparison's decision interval is a t interval of the mean log ratio over the passes, at
95% jointly for all of the sweep's comparisons (Bonferroni: each at 1 - 0.05/m). It decides one
of four verdicts: *equivalent* when it lies within ±margin (two one-sided tests, conservative),
*faster* or *slower* when it lies wholly beyond the margin, else *inconclusive*, with the
largest difference that it could not rule out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from b3core.spec.sizes import is_power_of_two

ALPHA = 0.05
DEFAULT_MARGIN = 0.02
VERDICTS = ("faster", "slower", "equivalent", "inconclusive")
METHOD = "paired by pass, t intervals of the log ratio, Bonferroni-adjusted to 95% jointly"


def relative_verdict(low: float, high: float, margin: float) -> str:
    """The verdict of a ratio's decision interval (low, high) at a margin of what matters:
    equivalent inside ±margin, faster or slower wholly beyond it, inconclusive otherwise (an
    interval above 1 that reaches into the margin shows a difference, not one that matters)."""
    if 1 - margin <= low and high <= 1 + margin:
        return "equivalent"
    if low > 1 + margin:
        return "faster"
    if high < 1 - margin:
        return "slower"
    return "inconclusive"


def log_ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float
) -> tuple[float, float, float]:
    """(ratio, low, high): the geometric mean of the paired ratios, and its t interval."""
    logs = np.log(np.asarray(numerator, float)) - np.log(np.asarray(denominator, float))
    mean = float(logs.mean())
    spread = float(logs.std(ddof=1)) / math.sqrt(len(logs))
    if spread == 0:
        return math.exp(mean), math.exp(mean), math.exp(mean)
    half = float(sps.t.ppf(0.5 + confidence / 2, len(logs) - 1)) * spread
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


@dataclass(frozen=True)
class NeighbourComparison:
    aligned: int
    neighbour: int
    kind: str  # "power of 2" or "multiple of 8"
    ratio: float  # the aligned size's samples/s over the neighbour's
    ci_low: float  # the decision interval of the ratio
    ci_high: float
    confidence: float  # of this interval alone (the family's is 1 - ALPHA)
    margin: float
    passes: int

    @property
    def verdict(self) -> str:
        return relative_verdict(self.ci_low, self.ci_high, self.margin)

    @property
    def not_ruled_out(self) -> float:
        """The largest relative difference that the interval leaves open."""
        return max(self.ci_high - 1, 1 - self.ci_low)

    @property
    def interval_text(self) -> str:
        return f"{100 * (self.ci_low - 1):+.1f}% to {100 * (self.ci_high - 1):+.1f}%"

    def describe(self) -> str:
        versus = f"{self.aligned} vs {self.neighbour}"
        if self.verdict == "equivalent":
            return f"{versus}: equivalent within ±{100 * self.margin:g}%"
        if self.verdict == "inconclusive":
            return f"{versus}: could not rule out differences up to {100 * self.not_ruled_out:.1f}%"
        return (
            f"{versus}: {self.verdict} by {100 * abs(self.ratio - 1):.1f}% ({self.interval_text})"
        )

    def to_dict(self) -> dict:
        return {**self.__dict__, "verdict": self.verdict}


def _kind(size: int) -> str | None:
    if is_power_of_two(size):
        return "power of 2"
    return "multiple of 8" if size % 8 == 0 else None


def compare_neighbours(
    rates: Mapping[int, Sequence[float]], margin: float = DEFAULT_MARGIN, alpha: float = ALPHA
) -> list[NeighbourComparison]:
    """rates: batch size -> samples/s of each pass, in pass order (at least 2 passes)."""
    pairs = [
        (size, neighbour, kind)
        for size in sorted(rates)
        if (kind := _kind(size))
        for neighbour in (size - 1, size + 1)
        if neighbour in rates and min(len(rates[size]), len(rates[neighbour])) > 1
    ]
    confidence = 1 - alpha / max(1, len(pairs))
    comparisons = []
    for size, neighbour, kind in pairs:
        passes = min(len(rates[size]), len(rates[neighbour]))
        ratio, low, high = log_ratio_interval(
            rates[size][:passes], rates[neighbour][:passes], confidence
        )
        comparisons.append(
            NeighbourComparison(size, neighbour, kind, ratio, low, high, confidence, margin, passes)
        )
    return comparisons


def comparison_frame(comparisons: Sequence[NeighbourComparison]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "aligned": c.aligned,
                "kind": c.kind,
                "vs": c.neighbour,
                "Δ samples/s %": round(100 * (c.ratio - 1), 1),
                "decision interval": c.interval_text,
                "verdict": c.verdict,
            }
            for c in comparisons
        ]
    )


def verdict(comparisons: Sequence[NeighbourComparison], kind: str = "power of 2") -> str:
    """One plain sentence on what the comparisons of `kind` sizes showed on this device, and
    what they could not."""
    mine = [c for c in comparisons if c.kind == kind]
    label = "powers of two" if kind == "power of 2" else "multiples of 8"
    if not mine:
        one = "power of two" if kind == "power of 2" else "multiple of 8"
        return (
            f"No {one} in this sweep has a neighbour (B-1 or B+1) to compare with: "
            f"add some, e.g. 127,128,129."
        )
    by_verdict = {v: [c for c in mine if c.verdict == v] for v in VERDICTS}
    n, margin = len(mine), f"±{100 * mine[0].margin:g}%"
    method = f"Intervals: {METHOD}, over {min(c.passes for c in mine)} passes."
    if len(by_verdict["equivalent"]) == n:
        sizes = ", ".join(sorted({str(c.aligned) for c in mine}, key=int))
        return (
            f"On this device {sizes} ran as fast as their neighbours B-1 and B+1: all {n} "
            f"comparisons equivalent within {margin}. {method}"
        )
    parts = []
    for name in ("faster", "slower"):
        if by_verdict[name]:
            largest = max(by_verdict[name], key=lambda c: abs(c.ratio - 1))
            parts.append(f"{len(by_verdict[name])} of {n} {name} (largest: {largest.describe()})")
    if by_verdict["equivalent"]:
        parts.append(f"{len(by_verdict['equivalent'])} of {n} equivalent within {margin}")
    if by_verdict["inconclusive"]:
        widest = max(c.not_ruled_out for c in by_verdict["inconclusive"])
        parts.append(
            f"{len(by_verdict['inconclusive'])} of {n} not shown either way (differences up "
            f"to {100 * widest:.0f}% could not be ruled out; more --passes narrow them)"
        )
    return f"{label.capitalize()} against B-1/B+1 on this device: {'; '.join(parts)}. {method}"
