"""What a sweep leaves behind: CSV, JSON and the plot, written once at the end (or on interrupt),
and the text summary. Pure functions of saved results: nothing here measures or builds a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from b3core.files import atomic_write
from b3core.reports.plots import plot_batch_curves, plot_tokens_over_lengths
from b3core.reports.tables import display_frame, results_frame, to_text
from b3core.spec.formats import stamped
from b3core.studies.alignment import (
    compare_neighbours,
    comparison_frame,
    log_ratio_interval,
    verdict,
)
from b3core.studies.memory_model import AnalyticMemory, analytic_fixed_memory

if TYPE_CHECKING:  # a record only: loading results never imports torch
    from b3core.studies.sweep import SweepResult


def sweep_frame(sweep: SweepResult) -> pd.DataFrame:
    frame = results_frame(sweep.results)
    if not frame.empty:
        frame.insert(0, "status", "ok")
    failures = pd.DataFrame(
        [
            {"status": "out of memory", "mode": mode, "batch": size, "notes": reason}
            for (mode, size), reason in sorted(sweep.failures.items())
        ]
    )
    return pd.concat([frame, failures], ignore_index=True) if not failures.empty else frame


def analytic_memory(sweep: SweepResult) -> AnalyticMemory | None:
    """Weights + gradients + optimizer state of the swept model, from the parameter count its
    results recorded: what the fit's fixed part should come near (on CUDA; on CPU the process's
    other growth adds to it)."""
    train = [r for r in sweep.for_mode("train") if r.workload]
    if not train:
        return None
    return analytic_fixed_memory(train[0].workload.parameters, train[0].spec.optimizer)


def alignment_verdicts(sweep: SweepResult, comparisons) -> dict[str, str]:
    rates = sweep.rates("train")
    if rates and min(len(r) for r in rates.values()) < 2:
        reason = "Alignment needs at least 2 passes per batch size (--passes): none was tested."
        return {"power of 2": reason, "multiple of 8": reason}
    return {kind: verdict(comparisons, kind) for kind in ("power of 2", "multiple of 8")}


def sweep_summary_dict(sweep: SweepResult, machine: dict) -> dict:
    comparisons = compare_neighbours(sweep.rates("train"))
    verdicts = alignment_verdicts(sweep, comparisons)
    fit = sweep.memory_fit("train")
    analytic = analytic_memory(sweep)
    return {
        "machine": machine,
        "results": [r.to_dict() for r in sweep.results],
        "failures": [
            {"mode": m, "batch_size": b, "reason": why}
            for (m, b), why in sorted(sweep.failures.items())
        ],
        "memory_fit": fit.to_dict() if fit else None,
        "analytic_fixed_memory": analytic.to_dict() if analytic else None,
        "alignment": [c.to_dict() for c in comparisons],
        "verdict_powers_of_two": verdicts["power of 2"],
        "verdict_multiples_of_8": verdicts["multiple of 8"],
    }


def write_sweep_report(out_dir: str | Path, sweep: SweepResult, machine: dict) -> list[Path]:
    out = Path(out_dir)
    csv_path, json_path = out / "sweep.csv", out / "sweep.json"
    atomic_write(csv_path, sweep_frame(sweep).to_csv(index=False))
    atomic_write(
        json_path,
        json.dumps(stamped("sweep", sweep_summary_dict(sweep, machine)), indent=2, default=str)
        + "\n",
    )
    written = [csv_path, json_path]
    frame = results_frame(sweep.results)
    if not frame.empty:
        fit = sweep.memory_fit("train")
        memory = (fit.fixed_bytes, fit.per_sample_bytes) if fit else None
        written.append(
            plot_batch_curves(
                frame[frame["mode"] == "train"] if memory else frame,
                out / "sweep.png",
                memory_fit=memory,
                title="b3 sweep: " + machine.get("slug", ""),
            )
        )
    return written


def render_sweep_summary(sweep: SweepResult) -> str:
    parts = []
    if sweep.results:
        parts.append(to_text(display_frame(results_frame(sweep.results))))
    for (mode, size), reason in sorted(sweep.failures.items()):
        parts.append(f"{mode} batch {size}: out of memory ({reason})")
    comparisons = compare_neighbours(sweep.rates("train"))
    verdicts = alignment_verdicts(sweep, comparisons)
    if comparisons:
        parts.append(
            "Alignment (training samples/s of the aligned size against its neighbour):\n"
            + to_text(comparison_frame(comparisons))
        )
    parts.append(verdicts["power of 2"])
    if any(c.kind == "multiple of 8" for c in comparisons):
        parts.append(verdicts["multiple of 8"])
    fit, analytic = sweep.memory_fit("train"), analytic_memory(sweep)
    if fit:
        line = (
            f"Memory model: M(B) = {fit.fixed_bytes / 2**20:.1f} MiB + "
            f"{fit.per_sample_bytes / 2**20:.3f} MiB x B (R² = {fit.r_squared:.3f})"
        )
        if analytic:
            line += (
                f"; weights, gradients and optimizer state come to "
                f"{analytic.total_bytes / 2**20:.1f} MiB"
            )
        parts.append(line)
    return "\n\n".join(parts)


# --- a sweep over sequence lengths: each length as a sweep, and tokens/s across them ---------

LEAD_CONFIDENCE = 0.95


def fastest_tokens(by_length: dict[int, SweepResult]) -> dict | None:
    """The (batch, length) with the most training tokens/s, and its lead over the runner-up:
    the ratio of their tokens/s pass by pass (a pass visits every unit once, in a shuffled
    order), with a t interval over the passes."""
    ranked = sorted(
        ((r, length) for length, sweep in by_length.items() for r in sweep.for_mode("train")),
        key=lambda item: -item[0].tokens_per_s,
    )
    if not ranked:
        return None
    (best, length), rest = ranked[0], ranked[1:]
    out = {"batch": best.spec.batch_size, "seq_len": length, "tokens_per_s": best.tokens_per_s,
           "tokens_per_s_ci95": list(best.token_throughput.ci95), "lead": None}  # fmt: skip
    if not rest:
        return out
    second, second_length = rest[0]
    a = [rate * length for rate in by_length[length].rates()[best.spec.batch_size]]
    b = [rate * second_length for rate in by_length[second_length].rates()[second.spec.batch_size]]
    passes = min(len(a), len(b))
    if passes >= 2:
        ratio, low, high = log_ratio_interval(a[:passes], b[:passes], LEAD_CONFIDENCE)
        out["lead"] = {"batch": second.spec.batch_size, "seq_len": second_length,
                       "ratio": ratio, "ci95": [low, high], "passes": passes}  # fmt: skip
    return out


def fastest_tokens_line(fastest: dict | None) -> str:
    if fastest is None:
        return "Fastest tokens/s: nothing was measured."
    low, high = fastest["tokens_per_s_ci95"]
    line = (
        f"Fastest tokens/s: batch {fastest['batch']} at length {fastest['seq_len']}, "
        f"{fastest['tokens_per_s']:.4g} tokens/s (95% CI {low:.4g} to {high:.4g})"
    )
    lead = fastest["lead"]
    if lead is None:
        return line + "; no runner-up measured over 2 passes or more."
    low, high = lead["ci95"]
    # the interval is this pair's alone, not adjusted for having picked the fastest of many
    shown = "not shown: within the noise" if low <= 1 <= high else "this pair's interval clears 1"
    return (
        f"{line}; ahead of batch {lead['batch']} at length {lead['seq_len']} by "
        f"{100 * (lead['ratio'] - 1):+.1f}% (95% CI {100 * (low - 1):+.1f}% to "
        f"{100 * (high - 1):+.1f}%, paired over {lead['passes']} passes: {shown})."
    )


def render_length_summary(by_length: dict[int, SweepResult]) -> str:
    parts = [
        f"Length {length}:\n{render_sweep_summary(sweep)}" for length, sweep in by_length.items()
    ]
    parts.append(fastest_tokens_line(fastest_tokens(by_length)))
    return "\n\n".join(parts)


def write_length_sweep_report(
    out_dir: str | Path, by_length: dict[int, SweepResult], machine: dict
) -> list[Path]:
    """sweep.csv (every length, a seq_len column), sweep.json (each length's summary and the
    fastest tokens/s), sweep-seq{L}.png per length, and sweep-lengths.png (tokens/s over L)."""
    out = Path(out_dir)
    csv_path, json_path = out / "sweep.csv", out / "sweep.json"
    frames = [sweep_frame(sweep) for sweep in by_length.values()]
    atomic_write(csv_path, pd.concat(frames, ignore_index=True).to_csv(index=False))
    summary = {
        "machine": machine,
        "lengths": {
            str(length): sweep_summary_dict(sweep, machine) for length, sweep in by_length.items()
        },
        "fastest_tokens": fastest_tokens(by_length),
    }
    atomic_write(json_path, json.dumps(stamped("sweep", summary), indent=2, default=str) + "\n")
    written = [csv_path, json_path]
    for length, sweep in by_length.items():
        frame = results_frame(sweep.results)
        if not frame.empty:
            fit = sweep.memory_fit("train")
            memory = (fit.fixed_bytes, fit.per_sample_bytes) if fit else None
            written.append(
                plot_batch_curves(
                    frame[frame["mode"] == "train"] if memory else frame,
                    out / f"sweep-seq{length}.png",
                    memory_fit=memory,
                    title=f"b3 sweep at length {length}: " + machine.get("slug", ""),
                )
            )
    train = results_frame([r for sweep in by_length.values() for r in sweep.for_mode("train")])
    if not train.empty:
        written.append(
            plot_tokens_over_lengths(
                train, out / "sweep-lengths.png", title="b3 sweep: tokens/s over length"
            )  # fmt: skip
        )
    return written
