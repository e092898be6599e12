"""Presentation: turns measured results into tables and text. It never measures anything."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from b3core.measuring.runner import StepResult
from b3core.measuring.stats import Measurement, Summary
from b3core.studies.experiment import ExperimentResult

MiB = 2**20


def format_time(seconds: float) -> str:
    if math.isnan(seconds):
        return "nan"
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} us"


def _decimals_for(spread: float) -> int:
    """Decimals that show the spread with two significant digits (none past 4)."""
    if not spread or math.isnan(spread):
        return 2
    return min(4, max(0, 1 - math.floor(math.log10(abs(spread)))))


def plus_minus(summary: Summary, scale: float = 1.0) -> str:
    """'mean ± SD' in plain decimals, rounded to the SD's precision."""
    return _pm(summary.mean / scale, summary.sd / scale)


def _pm(mean: float, sd: float) -> str:
    decimals = _decimals_for(sd)
    if math.isnan(sd):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def results_frame(results: Iterable[StepResult], source: str | None = None) -> pd.DataFrame:
    """One numeric row per configuration: what CSV files and plots are made from."""
    rows = []
    for r in results:
        m, s = r.measurement, r.spec
        rate = m.samples_per_second
        rows.append(
            {
                "source": source,
                "model": s.model,
                "mode": s.mode,
                "batch": s.batch_size,
                "precision": s.precision,
                "accum": s.accumulation_steps,
                "image_size": s.resolved_image_size,
                "samples_per_step": s.samples_per_step,
                "step_ms_mean": m.time.mean * 1e3,
                "step_ms_sd": m.time.sd * 1e3,
                "step_ms_median": m.time.median * 1e3,
                "step_ms_iqr": m.time.iqr * 1e3,
                "step_ms_ci95_low": m.time.ci95_low * 1e3,
                "step_ms_ci95_high": m.time.ci95_high * 1e3,
                "samples_per_s_mean": rate.mean,
                "samples_per_s_sd": rate.sd,
                "samples_per_s_median": rate.median,
                "samples_per_s_ci95_low": rate.ci95_low,
                "samples_per_s_ci95_high": rate.ci95_high,
                "peak_mib": r.memory.peak_bytes / MiB,
                "memory_source": r.memory.source,
                "n": m.time.n,
                "outliers": len(m.outliers),
                "notes": short_notes(m),
                "device": r.device_name,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = ["source", "model", "mode", "precision", "accum", "batch"]
    return frame.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """B3's layout for people: mean ± SD strings, median beside, peak memory, notes."""
    if frame.empty:
        return frame
    shown = pd.DataFrame(
        {
            "model": frame["model"],
            "mode": frame["mode"],
            "batch": frame["batch"],
            "precision": frame["precision"],
            "accum": frame["accum"],
            "samples/step": frame["samples_per_step"],
            "step ms (mean ± SD)": [
                _pm(mean, sd) for mean, sd in zip(frame["step_ms_mean"], frame["step_ms_sd"])
            ],
            "step ms (median)": frame["step_ms_median"].map(lambda v: f"{v:.4g}"),
            "samples/s (mean ± SD)": [
                _pm(mean, sd)
                for mean, sd in zip(frame["samples_per_s_mean"], frame["samples_per_s_sd"])
            ],
            "peak MiB": frame["peak_mib"].round().astype(int),
            "n": frame["n"],
            "notes": frame["notes"],
        }
    )
    if frame["source"].notna().any():
        shown.insert(0, "source", frame["source"])
    return shown


def step_rows(results: Iterable[StepResult]) -> pd.DataFrame:
    return display_frame(results_frame(results))


def comparison_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Median samples/s per configuration and source, with each source's ratio to the first."""
    keys = ["model", "mode", "precision", "accum", "batch"]
    sources = list(dict.fromkeys(frame["source"]))
    wide = frame.pivot_table(
        index=keys, columns="source", values="samples_per_s_median", aggfunc="first"
    )[sources]
    wide.columns = [f"{s} samples/s" for s in sources]
    wide = wide.round(1)
    base = wide.iloc[:, 0]
    for source, column in zip(sources[1:], list(wide.columns[1 : len(sources)])):
        wide[f"{source} / {sources[0]}"] = (wide[column] / base).round(3)
    return wide.reset_index()


def short_notes(m: Measurement) -> str:
    """Table-sized flags: dispersion above torch.utils.benchmark's 10% and Tukey outliers."""
    notes = []
    if m.noisy:
        notes.append(f"noisy (IQR {m.time.iqr / m.time.median:.0%} of median)")
    if m.outliers:
        notes.append(f"{len(m.outliers)} outlier(s)")
    return ", ".join(notes)


def describe_step_result(r: StepResult) -> str:
    m = r.measurement
    t = m.time
    lines = [
        f"{r.spec.label} on {r.device_name}",
        f"  step time     {plus_minus(t, 1e-3)} ms  (median {t.median * 1e3:.4g} ms, "
        f"IQR {t.iqr * 1e3:.4g} ms, 95% CI {t.ci95_low * 1e3:.4g} to {t.ci95_high * 1e3:.4g} ms, "
        f"n={t.n})",
        f"  samples/s     {plus_minus(m.samples_per_second)}  "
        f"({r.spec.samples_per_step} samples per step)",
        f"  iterations/s  {plus_minus(m.iterations_per_second)}",
        f"  peak memory   {r.memory.peak_bytes / MiB:.0f} MiB ({r.memory.source})",
        f"  first call    {format_time(r.first_call_s)} "
        + (
            "(torch.compile's compilation included; not in the statistics)"
            if r.spec.compile
            else "(warm-up, not in the statistics)"
        ),
    ]
    lines += [f"  warning: {w}" for w in m.warnings]
    return "\n".join(lines)


def experiment_rows(result: ExperimentResult) -> pd.DataFrame:
    """B3's results table: train, inference and combined time, plus what each phase processed."""
    cfg = result.config
    return pd.DataFrame(
        [
            {
                "model": cfg.model,
                "batch": cfg.batch_size,
                "precision": cfg.precision,
                "epochs": cfg.num_epochs,
                "train s": plus_minus(result.seconds("train")),
                "inference s": plus_minus(result.seconds("inference")),
                "combined s": plus_minus(result.seconds("combined")),
                "train samples": result.samples("train"),
                "train samples/s": plus_minus(result.samples_per_second("train")),
                "inference samples": result.samples("inference"),
                "inference samples/s": plus_minus(result.samples_per_second("inference")),
                "runs": len(result.runs),
            }
        ]
    )


def to_text(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False)
