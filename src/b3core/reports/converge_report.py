"""A convergence study's table and plots, from its runs' records.

Per batch size: how many seeds reached the target (a run that did not is counted, not
dropped), steps, epochs, samples and seconds to target as mean ± SD over the seeds that
reached it, best and final validation accuracy and the generalization gap over all
non-diverged seeds, and the gradient noise scale where it was measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rcParams

from b3core.files import atomic_write
from b3core.reports.plots import subplots
from b3core.reports.tables import mean_pm_sd
from b3core.spec.converge import CLOCK, ConvergeSpec
from b3core.spec.formats import stamped
from b3core.spec.step import StepSpec
from b3core.studies.converge_runs import ConvergeRun

TO_TARGET = ("steps_to_target", "epochs_to_target", "samples_to_target", "seconds_to_target")
ACCURACY = ("best_val_accuracy", "final_val_accuracy", "generalization_gap")


def runs_frame(runs: list[ConvergeRun]) -> pd.DataFrame:
    """One row per (batch, seed) run, without its curve."""
    rows = [
        {
            **{k: v for k, v in run.to_dict().items() if k != "curve"},
            "noise_scale_at_target": run.noise_scale_at_target,
        }
        for run in runs
    ]
    return pd.DataFrame(rows).sort_values(["batch_size", "seed"]).reset_index(drop=True)


def summary_frame(runs: list[ConvergeRun]) -> pd.DataFrame:
    """One row per batch size: means and SDs (ddof 1) as numbers, for CSV and JSON."""
    frame = runs_frame(runs)
    rows = []
    for batch, group in frame.groupby("batch_size"):
        reached = group[group["reached"]]
        finished = group[~group["diverged"]]
        row = {
            "batch_size": int(batch),
            "seeds": len(group),
            "reached": int(group["reached"].sum()),
            "reached_fraction": float(group["reached"].mean()),
            "diverged": int(group["diverged"].sum()),
            "out_of_memory": int(group["out_of_memory"].notna().sum())
            if "out_of_memory" in group
            else 0,
            "peak_lr": float(group["peak_lr"].max()),
            "updates": float(group["updates"].mean()),
        }
        for column in TO_TARGET:
            row.update(_mean_sd(column, reached[column]))
        for column in ACCURACY:
            row.update(_mean_sd(column, finished[column]))
        row.update(_mean_sd("noise_scale_at_target", group["noise_scale_at_target"]))
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_sd(name: str, values: pd.Series) -> dict:
    values = values.dropna().astype(float)
    mean = float(values.mean()) if len(values) else math.nan
    sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return {name: mean, f"{name}_sd": sd}


def display_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The table as printed: mean ± SD, reached as k/n."""

    def pm(row, name, scale=1.0):
        mean, sd = row[name], row[f"{name}_sd"]
        return "-" if math.isnan(mean) else mean_pm_sd(mean * scale, sd * scale)

    rows = []
    for _, row in summary.iterrows():
        rows.append(
            {
                "batch": int(row["batch_size"]),
                "lr": f"{row['peak_lr']:.3g}",
                "reached": f"{int(row['reached'])}/{int(row['seeds'])}" + _failures(row),
                "steps to target": pm(row, "steps_to_target"),
                "epochs": pm(row, "epochs_to_target"),
                "samples": pm(row, "samples_to_target"),
                "seconds": pm(row, "seconds_to_target"),
                "best val acc": pm(row, "best_val_accuracy"),
                "final val acc": pm(row, "final_val_accuracy"),
                "train - val": pm(row, "generalization_gap"),
                "noise scale at target": pm(row, "noise_scale_at_target"),
            }
        )
    return pd.DataFrame(rows)


def _failures(row) -> str:
    failed = [
        f"{int(row[column])} {what}"
        for column, what in (("diverged", "diverged"), ("out_of_memory", "out of memory"))
        if row[column]
    ]
    return f" ({', '.join(failed)})" if failed else ""


def knee(summary: pd.DataFrame) -> int | None:
    """The largest batch whose steps to target are still within 2x of perfect scaling from
    the smallest batch (Shallue et al.'s end of the perfect-scaling regime, roughly)."""
    rows = summary.dropna(subset=["steps_to_target"]).sort_values("batch_size")
    if rows.empty:
        return None
    b0, s0 = rows.iloc[0]["batch_size"], rows.iloc[0]["steps_to_target"]
    within = rows[rows["steps_to_target"] <= 2 * s0 * b0 / rows["batch_size"]]
    return int(within["batch_size"].max())


def critical_batch_fit(summary: pd.DataFrame) -> float | None:
    """B_noise of McCandlish et al.'s model of the steps to target, S(B) = S_min (1 +
    B_noise / B), fitted by least squares of S on 1/B (at least 3 batch sizes that reached
    the target); None when the fit has no positive S_min and B_noise."""
    from scipy.stats import linregress

    rows = summary.dropna(subset=["steps_to_target"])
    if len(rows) < 3:
        return None
    fit = linregress(1.0 / rows["batch_size"], rows["steps_to_target"])
    if not (fit.intercept > 0 and fit.slope > 0):
        return None
    return float(fit.slope / fit.intercept)


def study_noise_scale(runs: list[ConvergeRun]) -> float | None:
    """The median over runs of the noise scale at target (robust: one run's estimate can be
    far off while |G|^2 is small)."""
    at_target = (run.noise_scale_at_target for run in runs)
    values = [v for v in at_target if v is not None]
    return float(np.median(values)) if values else None


def plot_study(
    runs: list[ConvergeRun], summary: pd.DataFrame, target: float, path: Path, title: str
) -> Path:
    """Steps to target against batch (log-log, with perfect scaling and the noise scale);
    validation accuracy against samples seen and against training seconds; and, where it was
    measured, the noise scale over training."""
    measured = any(p.noise_scale for run in runs for p in run.curve)
    panels = 4 if measured else 3
    fig, axes = subplots(1, panels, figsize=(5 * panels, 4.2))
    steps_ax, samples_ax, time_ax = axes[:3]
    reached = summary.dropna(subset=["steps_to_target"])
    if not reached.empty:
        steps_ax.errorbar(
            reached["batch_size"],
            reached["steps_to_target"],
            yerr=reached["steps_to_target_sd"].fillna(0),
            fmt="o-",
            capsize=3,
            label="measured (mean ± SD)",
        )
        b0, s0 = reached.iloc[0]["batch_size"], reached.iloc[0]["steps_to_target"]
        batches = np.array(sorted(summary["batch_size"]))
        steps_ax.plot(batches, s0 * b0 / batches, "--", color="grey", label="perfect scaling")
    noise = study_noise_scale(runs)
    if noise is not None:
        steps_ax.axvline(noise, color="tab:red", ls=":", label="noise scale at target (median)")
    fitted = critical_batch_fit(summary)
    if fitted is not None:
        steps_ax.axvline(fitted, color="tab:green", ls="-.", label="B_noise fitted to the steps")
    steps_ax.set_xscale("log", base=2)
    steps_ax.set_yscale("log")
    steps_ax.set_xlabel("batch size")
    steps_ax.set_ylabel("steps to target")
    if steps_ax.get_legend_handles_labels()[0]:
        steps_ax.legend(fontsize=8)
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    for i, batch in enumerate(sorted({run.batch_size for run in runs})):
        color = colors[i % len(colors)]
        for run in (r for r in runs if r.batch_size == batch):
            curve = run.curve
            label = f"batch {batch}" if run.seed == 0 else None
            accuracy = [p.val_accuracy for p in curve]
            width = 1.5 if run.seed == 0 else 0.6
            samples_ax.plot([p.samples for p in curve], accuracy, color=color, lw=width)
            if measured:
                scaled = [(p.samples, p.noise_scale) for p in curve if p.noise_scale]
                if scaled:
                    axes[3].plot(*zip(*scaled), color=color, lw=width)
            time_ax.plot([p.seconds for p in curve], accuracy, color=color, lw=width, label=label)
    for ax, xlabel in ((samples_ax, "samples seen"), (time_ax, "training seconds")):
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy")
    if any(run.curve for run in runs):  # every run may have diverged before its first look
        samples_ax.set_xscale("log")
        time_ax.legend(fontsize=8)
    if measured:
        axes[3].set_xscale("log")
        axes[3].set_yscale("log")  # early on, and near convergence, |G|^2 is small: it spikes
        axes[3].set_xlabel("samples seen")
        axes[3].set_ylabel("gradient noise scale B_simple")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_converge_report(
    out: str | Path, spec: ConvergeSpec, step: StepSpec, runs: list[ConvergeRun], machine: dict
) -> str:
    """converge.csv (per batch), converge.json (the summary and every run) and converge.png;
    returns the table and notes to print."""
    if not runs:
        return "no finished runs yet"
    folder = Path(out)
    summary = summary_frame(runs)
    atomic_write(folder / "converge.csv", summary.to_csv(index=False))
    title = (
        f"{step.model} on {spec.dataset}, target {spec.target_accuracy:g}, {step.optimizer} "
        f"lr {step.lr:g} at batch {spec.reference_batch} ({spec.lr_rule} rule), {spec.seeds} seeds"
    )
    plot_study(runs, summary, spec.target_accuracy, folder / "converge.png", title)
    critical, fitted, noise = knee(summary), critical_batch_fit(summary), study_noise_scale(runs)
    payload = {
        "study": spec.to_dict(),
        "step": step.to_dict(),
        "clock": CLOCK,
        "machine": machine,
        "knee_batch": critical,
        "fitted_critical_batch": fitted,
        "noise_scale_at_target": noise,
        "summary": summary.astype(object).where(summary.notna(), None).to_dict(orient="records"),
        "runs": [run.to_dict() for run in runs],
    }
    text = json.dumps(stamped("converge", payload), indent=2, default=str)
    atomic_write(folder / "converge.json", text + "\n")
    lines = [title, display_frame(summary).to_markdown(index=False)]
    lines.append(f"seconds: training steps only ({CLOCK})")
    if critical is not None:
        lines.append(f"knee: batch {critical} is the largest within 2x of perfect step scaling")
    if fitted is not None:
        lines.append(f"steps to target fit S_min (1 + B_noise / B) with B_noise ~ {fitted:.0f}")
    if noise is not None:
        lines.append(f"gradient noise scale B_simple at target ~ {noise:.0f} (median over runs)")
    elif step.accumulation_steps < 2:
        lines.append("noise scale: give --accumulation-steps 2 or more to measure it")
    lines.append(f"saved in {folder}/converge.{{jsonl,csv,json,png}}")
    return "\n".join(lines)
