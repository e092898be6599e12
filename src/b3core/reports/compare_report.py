"""Tables and the run-order plot of `b3 compare`. Built from comparison records; never measures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from b3core.reports.plots import subplots
from b3core.reports.tables import format_time, to_text
from b3core.studies.compare.records import SIDES, CaseComparison, Comparison
from b3core.studies.compare.saved import SavedComparison
from b3core.studies.compare.verdict import INCONCLUSIVE, Estimate
from b3core.workloads.info import WorkloadInfo

SIDE_COLOURS = {"base": "tab:blue", "head": "tab:orange"}
DECISION_COLUMN = "head/base (decision interval, level)"


def ratio_text(estimate: Estimate | None) -> str:
    """The ratio with the interval that decided its verdict, and that interval's level."""
    if estimate is None:
        return "-"
    low, high = estimate.decision_ci
    return f"{estimate.ratio:.3f} ({low:.3f} to {high:.3f}, {estimate.decision_level:.1%})"


def ci95_text(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    low, high = estimate.ci95
    return f"{low:.3f} to {high:.3f}"


def _median_text(seconds: float | None) -> str:
    return "-" if seconds is None else format_time(seconds)


def case_row(case: CaseComparison) -> dict:
    estimate = case.estimate
    return {
        "case": case.spec.label,
        "base median": _median_text(case.median("base")),
        "head median": _median_text(case.median("head")),
        DECISION_COLUMN: ratio_text(estimate),
        "plain 95% CI": ci95_text(estimate),
        "p": "-" if estimate is None else f"{estimate.p:.2g}",
        "verdict": case.failure and f"not compared: {case.failure}" or case.verdict,
        "rounds": case.rounds,
        "epochs": case.epochs,
        "pairs": case.pairs,
        "time": f"{case.elapsed_s:.0f} s",
    }


def comparison_table(comparison: Comparison) -> str:
    return to_text(pd.DataFrame([case_row(c) for c in comparison.cases]))


def notes(comparison: Comparison) -> list[str]:
    """What a reader needs beside the table: how it was judged, and what an inconclusive
    case could have detected."""
    s = comparison.settings
    lines = [
        "ratio = head/base step time: mean over rounds (fresh servers) of their epochs' (fresh "
        "worker processes) Hodges-Lehmann estimates of their interleaved pairs' log "
        "block-median ratios; intervals and p from Student's t over the rounds. The verdict "
        "reads the decision "
        "interval: alpha "
        f"{s.alpha:g} is shared by all looks and cases, so each look decides at a level wider "
        "than 95% (the plain 95% CI is shown beside it, and decides nothing). Regression: "
        f"above {1 + s.threshold:.3g} and the interval above 1; no regression: its upper end "
        f"below {1 + s.threshold:.3g}",
        f"workers: {_workers_text(comparison.workers)}",
    ]
    worlds = {side: record.get("world_size") for side, record in comparison.sides.items()}
    if any(worlds.values()):
        backend = next(r.get("backend") for r in comparison.sides.values() if r.get("backend"))
        lines.append(
            f"each side ran as {max(filter(None, worlds.values()))} data-parallel ranks "
            f"({backend}): a block's time is its slowest rank's (every rank's in --json)"
        )
    for case in comparison.cases:
        if case.estimate and case.estimate.between_sd is not None:
            lines.append(spread_text(case))
        if case.verdict == INCONCLUSIVE and case.estimate and case.estimate.detectable:
            lines.append(
                f"{case.spec.label}: inconclusive after {case.elapsed_s:.0f} s; at this noise "
                f"the smallest slowdown it could flag is about {case.estimate.detectable:.1%} "
                "(give it more --max-time, or a quieter machine)"
            )
        models = {
            side: WorkloadInfo.from_dict(replies[0]["workload"])
            for side, replies in case.prepared.items()
            if replies and "workload" in replies[0]
        }
        if len(models) == 2 and len({(m.identity, m.parameters) for m in models.values()}) > 1:
            sides = "; ".join(
                f"{side}: {m.identity}, {m.parameters:,} parameters" for side, m in models.items()
            )
            lines.append(f"{case.spec.label}: the sides timed different models ({sides})")
        skipped = {side: n for side, n in case.skipped_updates.items() if n}
        if skipped:
            lines.append(f"{case.spec.label}: GradScaler skipped updates while timed: {skipped}")
    return lines


def _workers_text(workers: dict) -> str:
    if workers.get("start") == "fork":
        text = (
            "a fresh worker per side and epoch, forked by the side's server (torch and the "
            "side's code imported once), heap and mappings shifted at random"
        )
    else:
        text = "a fresh interpreter per side and epoch"
        if workers.get("fell_back"):
            text += f" (the servers would not fork: {workers['fell_back']})"
    env = workers.get("environment")
    if env:
        text += "; " + " ".join(f"{name}={value}" for name, value in env.items())
    return text


def spread_text(case: CaseComparison) -> str:
    """Where the noise was: between rounds (what decided), between fresh pairs of processes
    inside a round, and inside one pair of processes."""
    estimate = case.estimate

    def sd(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    return (
        f"{case.spec.label}: SD of log ratios between rounds {sd(estimate.round_sd)}, between "
        f"epochs (fresh processes) in a round {sd(estimate.between_sd)}, between pairs in an "
        f"epoch {sd(estimate.within_sd)}; {case.rounds} rounds of {case.epochs_per_round} "
        f"epoch(s) in {case.elapsed_s:.0f} s"
    )


def outlook_text(case: CaseComparison, threshold: float) -> str:
    """Said at the first look: what the budget can decide at the noise seen so far."""
    view = case.outlook
    text = (
        f"{case.spec.label}: after {view['after_rounds']} rounds, their log ratios spread "
        f"{view['round_sd']:.1%}; the ~{view['planned_rounds']} rounds of this budget can flag "
        f"a slowdown of about {view['detectable_by_last_look']:.1%}"
    )
    if "rounds_needed" in view:
        text += (
            f", more than the {threshold:.1%} threshold: about {view['rounds_needed']} rounds "
            f"(--max-time {view['time_needed_s']:.0f}) would bring it there"
        )
    return text


def plot_blocks(comparison: Comparison, path: str | Path) -> Path:
    """Each case's block medians in run order, both sides on one axis: drift shows, and so
    does why interleaving cancels it."""
    cases = [c for c in comparison.cases if c.blocks]
    fig, axes = subplots(len(cases) or 1, 1, figsize=(9, 2.8 * max(1, len(cases))), squeeze=False)
    for ax, case in zip(axes[:, 0], cases):
        for side in SIDES:
            blocks = [b for b in case.blocks if b.side == side]
            ax.plot(
                [b.started_s for b in blocks],
                [b.median * 1e3 for b in blocks],
                marker="o",
                markersize=3,
                linewidth=0.8,
                color=SIDE_COLOURS[side],
                label=f"{side} ({comparison.sides.get(side, {}).get('revision', side)})",
            )
        ax.set_title(
            f"{case.spec.label}: {case.verdict}, ratio {ratio_text(case.estimate)}", fontsize=9
        )
        ax.set_ylabel("block median step (ms)")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("seconds since the case began (run order)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def saved_table(saved: SavedComparison) -> str:
    rows = [
        {
            "case": c.label,
            "base median": format_time(c.base_median_s),
            "head median": format_time(c.head_median_s),
            DECISION_COLUMN: ratio_text(c.estimate),
            "plain 95% CI": ci95_text(c.estimate),
            "p": f"{c.estimate.p:.2g}",
            "verdict": c.verdict,
            "times per side": c.estimate.n,
        }
        for c in saved.cases
    ]
    return to_text(pd.DataFrame(rows))
