"""What `b3 plan` prints and plots: every candidate with its memory, feasibility, samples/s,
MFU and phases; the recommendation with its lead; the Pareto plot. Pure functions of the
plan's record: nothing here measures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from b3core.measuring.result import PHASE_NAMES
from b3core.reports.plots import subplots
from b3core.reports.tables import SHORT_PHASE_NAMES, to_text

if TYPE_CHECKING:  # records only
    from b3core.studies.plan import Plan

MiB = 2**20


def _mib(value) -> str:
    return "" if value is None else f"{value / MiB:.0f}"


def plan_table(plan: Plan) -> str:
    rows = []
    for c in plan.candidates:
        rate = plan.rate(c)
        phases = c.result.phases if c.result else None
        rows.append(
            {
                "candidate": c.name,
                "predicted MiB": _mib(c.predicted_peak),
                "measured MiB": _mib(c.peak_bytes),
                "headroom MiB": _mib(plan.memory_budget - c.peak_bytes)
                if c.peak_bytes and plan.memory_budget
                else "",
                "fits": {True: "yes", False: "no", None: "?"}[c.feasible],
                "samples/s (95% CI)": ""
                if rate is None
                else f"{rate[0]:.4g}"
                + (f" ({rate[1][0]:.4g} to {rate[1][1]:.4g})" if rate[1] else ""),
                "MFU": "" if plan.mfu(c) is None else f"{plan.mfu(c):.1%}",
                "fwd/bwd/opt %": ""
                if phases is None
                else "/".join(
                    f"{100 * phases.share(p):.0f}" for p in PHASE_NAMES if p in phases.times
                ),
                "why": c.why,
            }
        )
    frame = pd.DataFrame(rows)
    if not any(r["fwd/bwd/opt %"] for r in rows):
        frame = frame.drop(columns="fwd/bwd/opt %")
    elif any(c.result and c.result.phases and "all_reduce" in c.result.phases.times
             for c in plan.candidates):  # fmt: skip
        frame = frame.rename(columns={"fwd/bwd/opt %": "/".join(SHORT_PHASE_NAMES.values()) + " %"})
    return to_text(frame)


def closing_lines(plan: Plan) -> list[str]:
    """The recommendation and its lead over the runner-up, the learning rate, the method."""
    ranked = plan.ranking()
    if not ranked:
        return ["No candidate was timed: nothing to recommend."]
    best = ranked[0]
    rate = plan.rate(best)
    lines = [
        f"Fastest: {best.name} (micro-batch {best.spec.batch_size} x "
        f"{best.spec.accumulation_steps} accumulation steps"
        + (f" x {plan.ranks} ranks" if plan.ranks > 1 else "")
        + f"), {rate[0]:.4g} samples/s, peak {best.peak_bytes / MiB:.0f} MiB."
    ]
    lead = plan.lead()
    if lead is not None and lead.ci is not None:
        lines.append(f"Its lead: {lead.describe()}.")
        if plan.recommended() is not best:
            lines.append(
                f"Within the ±{100 * lead.margin:g}% margin of each other: the tie goes to "
                f"the smaller peak memory. Recommended: {plan.recommended().name}."
            )
    pair = {lead.first, lead.second} if lead else set()
    others = [
        c
        for c in (plan.run.comparisons if plan.run else [])
        if c.ci and {c.first, c.second} != pair
    ]
    if others:
        lines.append("Against the others: " + "; ".join(c.describe() for c in others) + ".")
    if len(ranked) > 1 and (lead is None or lead.ci is None):
        lines.append(
            f"Its lead over {ranked[1].name} was not judged: neither was the first candidate "
            "timed against the other (or too few epochs ran); a longer --max-time decides it."
        )
    if plan.lr:
        lr = plan.lr
        warm = f", {lr['warmup_steps']} warm-up steps" if "warmup_steps" in lr else ""
        lines.append(
            f"Learning rate for batch {lr['batch']}: {lr['lr']:.3g} ({lr['rule']} rule from "
            f"{lr['base_lr']:g} at batch {lr['base_batch']}{warm}; validate the accuracy)."
        )
    run = plan.run
    if run is not None and run.comparisons:
        lines.append(
            f"Method: each candidate's peak measured once with its accumulation (memory lines "
            f"from two probes per lever setting pick which); the {len(ranked)} that fit timed "
            f"as whole updates, interleaved in {run.epochs} fresh processes in "
            f"{run.elapsed_s:.0f} s; the fastest single measured run compared with each other "
            f"on samples/s, all verdicts wrong "
            f"with probability at most {plan.settings.alpha:g} (Bonferroni over "
            f"{len(run.comparisons)} comparisons, alpha spent over {len(run.looks)} "
            f"look{'s' if len(run.looks) != 1 else ''}). "
            f"Per lever setting only the {plan.settings.timed_per_lever} largest micro-batches "
            "that fit are timed; smaller ones are taken to be slower (--timed-per-lever)."
        )
    return lines


def time_to_target_line(prediction: dict) -> str:
    p = prediction
    return (
        f"Time to target: {p['seconds']:.3g} s predicted ({p['steps_to_target']:.0f} updates "
        f"to target at this batch, {p['reached']}/{p['runs']} runs reached it, x "
        f"{p['update_s']:.3g} s per update of {p['configuration']})."
    )


def plot_plan(plan: Plan, path: str | Path) -> Path:
    """samples/s against peak memory for each timed candidate (95% CI bars), the budget as a
    line, and the untimed candidates' predicted peaks along the axis."""
    fig, ax = subplots(figsize=(8, 4.5))
    for c in plan.timed:
        rate = plan.rate(c)
        if rate is None:
            continue
        low, high = rate[1] if rate[1] else (rate[0], rate[0])
        ax.errorbar(c.peak_bytes / MiB, rate[0], yerr=[[rate[0] - low], [high - rate[0]]],
                    fmt="o", capsize=3)  # fmt: skip
        ax.annotate(c.name, (c.peak_bytes / MiB, rate[0]), xytext=(4, 4),
                    textcoords="offset points", fontsize=7)  # fmt: skip
    rest = [c for c in plan.candidates if not c.timed and c.predicted_peak]
    if rest:
        ax.plot([c.predicted_peak / MiB for c in rest], [0] * len(rest), "|", color="grey",
                markersize=12, label="not timed: predicted peak")  # fmt: skip
    if plan.memory_budget:
        ax.axvline(plan.memory_budget / MiB, color="tab:red", linestyle="--", label="budget")
    ax.set_xlabel("peak memory, MiB")
    ax.set_ylabel("samples/s (interleaved, 95% CI)")
    ax.set_title(f"b3 plan: {plan.base.model}, global batch {plan.global_batch}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
