"""What `b3 align` prints and plots: each comparison's verdict with the interval that decided it,
the sentence that says exactly what was shown, and the method. Pure functions of the run's
record: nothing here measures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from b3core.reports.plots import subplots
from b3core.reports.tables import to_text

if TYPE_CHECKING:  # a record only
    from b3core.studies.align import AlignRun


def align_table(run: AlignRun) -> str:
    rows = []
    for c in run.comparisons:
        interval = (
            f"{100 * (c.ci[0] - 1):+.1f}% to {100 * (c.ci[1] - 1):+.1f}% ({c.level:.1%})"
            if c.ci
            else "n/a"
        )
        rows.append(
            {
                "aligned": c.aligned,
                "vs": c.neighbour,
                "Δ samples/s %": round(100 * (c.ratio - 1), 1) if c.ratio else None,
                "decision interval": interval,
                "verdict": c.verdict,
                "decided after epochs": c.decided_at or "",
            }
        )
    return to_text(pd.DataFrame(rows))


def closing_sentence(run: AlignRun) -> str:
    """What was shown, per aligned size: equivalence, a difference with its interval, or the
    difference that could not be ruled out."""
    if run.failure:
        return f"Not compared: {run.failure}."
    parts = []
    for aligned in sorted({c.aligned for c in run.comparisons}):
        mine = [c for c in run.comparisons if c.aligned == aligned]
        same = [c for c in mine if c.verdict == "equivalent"]
        if same:
            neighbours = " and ".join(str(c.neighbour) for c in same)
            parts.append(
                f"{aligned} is equivalent to {neighbours} within ±{100 * same[0].margin:g}%"
            )
        parts += [c.describe() for c in mine if c.verdict != "equivalent"]
    return f"On this device, {run.spec.model} ({run.spec.precision}): " + "; ".join(parts) + "."


def method_line(run: AlignRun) -> str:
    s = run.settings
    looks = len(run.looks)
    return (
        f"Samples/s of each aligned size over each neighbour's, {run.epochs} fresh processes "
        f"(epochs) of interleaved blocks in {run.elapsed_s:.0f} s; t intervals over the "
        f"epochs, at most {s.alpha:g} wrong verdicts in all: Bonferroni over "
        f"{len(run.comparisons)} comparisons and alpha spent over {looks} look"
        f"{'s' if looks != 1 else ''}. Equivalent: the interval inside ±{100 * s.margin:g}% "
        "(two one-sided tests)."
    )


def plot_alignment(run: AlignRun, path: str | Path) -> Path:
    """Each comparison's difference with its decision interval, the equivalence band shaded."""
    shown = [c for c in run.comparisons if c.ci]
    fig, ax = subplots(figsize=(7, 1.2 + 0.45 * max(1, len(shown))))
    margin = 100 * run.settings.margin
    ax.axvspan(-margin, margin, color="tab:green", alpha=0.15, label=f"equivalent (±{margin:g}%)")
    ax.axvline(0, color="grey", lw=0.8)
    for row, c in enumerate(shown):
        centre = 100 * (c.ratio - 1)
        low, high = 100 * (c.ci[0] - 1), 100 * (c.ci[1] - 1)
        ax.errorbar(centre, row, xerr=[[centre - low], [high - centre]], fmt="o", capsize=3)
        ax.annotate(c.verdict, (high, row), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(shown)), [f"{c.aligned} vs {c.neighbour}" for c in shown])
    ax.set_xlabel("aligned size's samples/s against the neighbour's (%), decision interval")
    ax.set_title(f"b3 align: {run.spec.model}, {run.spec.device}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
