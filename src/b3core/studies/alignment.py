"""Did powers of two (or multiples of 8) matter? Each aligned size in a sweep is compared with
its neighbours B-1 and B+1 on samples/s, with Welch's 95% interval, and the p-values are
adjusted for the number of comparisons (Benjamini-Hochberg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
from scipy import stats as sps

from b3core.measuring.stats import difference_ci
from b3core.spec.sizes import is_power_of_two

ALPHA = 0.05


@dataclass(frozen=True)
class NeighbourComparison:
    aligned: int
    neighbour: int
    kind: str  # "power of 2" or "multiple of 8"
    diff: float  # samples/s of aligned minus neighbour
    ci_low: float
    ci_high: float
    relative: float  # diff / neighbour's mean
    p_value: float
    p_adjusted: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.p_adjusted < ALPHA


def compare_neighbours(rates: Mapping[int, Sequence[float]]) -> list[NeighbourComparison]:
    """rates: batch size -> per-step samples/s of that size (at least 2 values each)."""
    comparisons = []
    for size in sorted(rates):
        if is_power_of_two(size):
            kind = "power of 2"
        elif size % 8 == 0:
            kind = "multiple of 8"
        else:
            continue
        for neighbour in (size - 1, size + 1):
            if neighbour in rates and len(rates[size]) > 1 and len(rates[neighbour]) > 1:
                diff, low, high, p = difference_ci(rates[size], rates[neighbour])
                base = sum(rates[neighbour]) / len(rates[neighbour])
                comparisons.append(
                    NeighbourComparison(size, neighbour, kind, diff, low, high, diff / base, p)
                )
    if comparisons:
        adjusted = sps.false_discovery_control([c.p_value for c in comparisons])
        comparisons = [
            NeighbourComparison(**{**c.__dict__, "p_adjusted": float(q)})
            for c, q in zip(comparisons, adjusted)
        ]
    return comparisons


def comparison_frame(comparisons: Sequence[NeighbourComparison]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "aligned": c.aligned,
                "kind": c.kind,
                "vs": c.neighbour,
                "Δ samples/s": round(c.diff, 1),
                "95% CI (unadjusted)": f"{c.ci_low:.1f} to {c.ci_high:.1f}",
                "Δ %": round(100 * c.relative, 1),
                "p (adjusted)": round(c.p_adjusted, 4),
                "significant": "yes" if c.significant else "no",
            }
            for c in comparisons
        ]
    )


def verdict(comparisons: Sequence[NeighbourComparison], kind: str = "power of 2") -> str:
    """One plain sentence on whether `kind` sizes mattered on this device."""
    mine = [c for c in comparisons if c.kind == kind]
    label = "powers of two" if kind == "power of 2" else "multiples of 8"
    if not mine:
        one = "power of two" if kind == "power of 2" else "multiple of 8"
        return (
            f"No {one} in this sweep has a neighbour (B-1 or B+1) to compare with: "
            f"add some, e.g. 127,128,129."
        )
    faster = [c for c in mine if c.significant and c.diff > 0]
    slower = [c for c in mine if c.significant and c.diff < 0]
    n = len(mine)
    if not faster and not slower:
        return (
            f"{label.capitalize()} did not matter on this device: none of {n} comparisons "
            f"with B-1/B+1 showed a significant difference in samples/s (95%, BH-adjusted)."
        )
    parts = []
    if faster:
        best = max(faster, key=lambda c: c.relative)
        parts.append(
            f"{len(faster)} of {n} comparisons found the aligned size significantly "
            f"faster (largest: {best.aligned} vs {best.neighbour}, "
            f"{100 * best.relative:+.1f}%)"
        )
    if slower:
        parts.append(f"{len(slower)} of {n} found it significantly slower")
    mattered = "mattered" if len(faster) > len(slower) else "gave no consistent advantage"
    return f"{label.capitalize()} {mattered} on this device: " + "; ".join(parts) + "."
