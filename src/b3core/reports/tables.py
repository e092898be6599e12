"""Presentation: turns measured results into tables and text. It never measures anything."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pandas as pd

from b3core.measuring.result import PHASE_NAMES, StepResult
from b3core.measuring.stats import QUARTILES, Measurement, Summary, Throughput
from b3core.measuring.telemetry_summary import SignalRange, TelemetrySummary

if TYPE_CHECKING:  # a record only: loading results never imports torch
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
    return mean_pm_sd(summary.mean / scale, summary.sd / scale)


def mean_pm_sd(mean: float, sd: float) -> str:
    decimals = _decimals_for(sd)
    if math.isnan(sd):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def rate_text(value: float) -> str:
    """Four significant digits, never in exponent form: 0.2345, 23.45, 2345, 23450."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def with_ci(rate: Throughput) -> str:
    """'141 (126 to 160)': the ratio estimate with its 95% interval."""
    low, high = rate.ci95
    if math.isnan(low):
        return rate_text(rate.samples_per_s)
    return f"{rate_text(rate.samples_per_s)} ({rate_text(low)} to {rate_text(high)})"


def results_frame(results: Iterable[StepResult], source: str | None = None) -> pd.DataFrame:
    """One numeric row per configuration: what CSV files and plots are made from."""
    rows = []
    for r in results:
        cpu = r.telemetry.cpu if r.telemetry else None
        m, s = r.measurement, r.spec
        rate = m.throughput
        rows.append(
            {
                "source": source,
                "model": s.model,
                "mode": s.mode,
                "batch": s.batch_size,
                "precision": s.precision,
                "accum": s.accumulation_steps,
                "seq_len": r.workload.tokens_per_sample if r.workload else None,
                "input_shape": "x".join(map(str, r.workload.input_shape)) if r.workload else "",
                "model_identity": r.workload.identity if r.workload else "",
                "samples_per_step": m.samples_per_step,  # global under data parallel
                "clock": m.clock,
                "steps_per_sample": m.steps_per_sample,
                "step_ms_mean": m.time.mean * 1e3,
                "step_ms_sd": m.time.sd * 1e3,
                "step_ms_median": m.time.median * 1e3,
                "step_ms_iqr": m.time.iqr * 1e3,
                "step_ms_ci95_low": m.time.ci95_low * 1e3,
                "step_ms_ci95_high": m.time.ci95_high * 1e3,
                "samples_per_s": rate.samples_per_s,
                "samples_per_s_ci95_low": rate.ci95[0],
                "samples_per_s_ci95_high": rate.ci95[1],
                "tokens_per_sample": r.workload.tokens_per_sample if r.workload else None,
                "tokens_per_s": r.tokens_per_s,
                "tokens_per_s_ci95_low": r.token_throughput.ci95[0] if r.token_throughput else None,
                "tokens_per_s_ci95_high": r.token_throughput.ci95[1]
                if r.token_throughput
                else None,
                "flops_per_step": r.flops_per_step,
                "gflops_per_s": r.flops_per_s / 1e9 if r.flops_per_s else None,
                **{
                    f"{phase}_share": r.phases.share(phase)
                    if r.phases and phase in r.phases.times
                    else None
                    for phase in PHASE_NAMES
                },
                "mfu": r.mfu.samples_per_s if r.mfu else None,
                "mfu_ci95_low": r.mfu.ci95[0] if r.mfu else None,
                "mfu_ci95_high": r.mfu.ci95[1] if r.mfu else None,
                "peak_mib": r.memory.peak_bytes / MiB,
                "memory_source": r.memory.source,
                "n": m.time.n,
                "outliers": len(m.outliers),
                "skipped_steps": r.skipped_steps,
                "notes": short_notes(r),
                "contended": r.contended,
                "steal_share": cpu.steal_share if cpu else None,
                "outside_load_cores": cpu.outside_load_cores if cpu else None,
                "energy_j_per_sample": r.telemetry.energy_per_sample if r.telemetry else None,
                "device": r.device_name,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = ["source", "model", "mode", "precision", "accum", "seq_len", "batch"]
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
                mean_pm_sd(mean, sd) for mean, sd in zip(frame["step_ms_mean"], frame["step_ms_sd"])
            ],
            "step ms (median)": frame["step_ms_median"].map(lambda v: f"{v:.4g}"),
            "samples/s (95% CI)": [
                with_ci(Throughput(rate, (low, high), 0, 0.0))
                for rate, low, high in zip(
                    frame["samples_per_s"],
                    frame["samples_per_s_ci95_low"],
                    frame["samples_per_s_ci95_high"],
                )
            ],
            "peak MiB": frame["peak_mib"].round().astype(int),
            "clock": [
                clock if k == 1 else f"{clock} ({k} steps)"
                for clock, k in zip(frame["clock"], frame["steps_per_sample"])
            ],
            "n": frame["n"],
            "notes": frame["notes"],
        }
    )
    if frame["seq_len"].nunique() > 1:  # a sweep over lengths
        shown.insert(shown.columns.get_loc("batch"), "seq len", frame["seq_len"].astype("Int64"))
    if frame["tokens_per_s"].notna().any():  # sequence models: a sample is L tokens
        rates = zip(
            frame["tokens_per_s"], frame["tokens_per_s_ci95_low"], frame["tokens_per_s_ci95_high"]
        )
        shown.insert(
            shown.columns.get_loc("samples/s (95% CI)") + 1,
            "tokens/s (95% CI)",
            [
                with_ci(Throughput(rate, (low, high), 0, 0.0)) if pd.notna(rate) else ""
                for rate, low, high in rates
            ],
        )
    phased = [p for p in PHASE_NAMES if frame[f"{p}_share"].notna().any()]
    if phased:
        shown.insert(
            shown.columns.get_loc("peak MiB"),
            "/".join(SHORT_PHASE_NAMES[p] for p in phased) + " %",
            [
                "/".join(f"{100 * row[f'{p}_share']:.0f}" for p in phased)
                if pd.notna(row[f"{phased[0]}_share"])
                else ""
                for _, row in frame.iterrows()
            ],
        )
    if frame["mfu"].notna().any():
        shown.insert(
            shown.columns.get_loc("peak MiB"),
            "MFU",
            [f"{share:.1%}" if pd.notna(share) else "" for share in frame["mfu"]],
        )
    if frame["source"].notna().any():
        shown.insert(0, "source", frame["source"])
    return shown


def step_rows(results: Iterable[StepResult]) -> pd.DataFrame:
    return display_frame(results_frame(results))


def comparison_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Samples/s per configuration and source, with each source's ratio to the first."""
    keys = ["model", "mode", "precision", "accum", "batch"]
    sources = list(dict.fromkeys(frame["source"]))
    wide = frame.pivot_table(index=keys, columns="source", values="samples_per_s", aggfunc="first")[
        sources
    ]
    wide.columns = [f"{s} samples/s" for s in sources]
    wide = wide.round(1)
    base = wide.iloc[:, 0]
    for source, column in zip(sources[1:], list(wide.columns[1 : len(sources)])):
        wide[f"{source} / {sources[0]}"] = (wide[column] / base).round(3)
    return wide.reset_index()


def short_notes(r: StepResult) -> str:
    """Table-sized flags: dispersion above torch.utils.benchmark's 10%, Tukey outliers, and
    optimizer updates that GradScaler skipped inside the clock."""
    m: Measurement = r.measurement
    notes = []
    if m.noisy:
        notes.append(f"noisy (IQR {m.time.iqr / m.time.median:.0%} of median)")
    if m.outliers:
        notes.append(f"{len(m.outliers)} outlier(s)")
    if r.skipped_steps:
        notes.append(f"{r.skipped_steps} skipped update(s)")
    if r.warmup and not r.warmup.settled:
        notes.append("not settled")
    if r.contended:
        notes.append("contended")
    return ", ".join(notes)


def _range(signal: SignalRange, unit: str, fmt: str = ".0f") -> str:
    low, mid, high = signal.min, signal.median, signal.max
    return f"{mid:{fmt}} {unit} (min {low:{fmt}}, max {high:{fmt}})"


def describe_telemetry(telemetry: TelemetrySummary) -> list[str]:
    """The telemetry lines of a step's report: CPU contention, GPU state, energy."""
    signals, lines = telemetry.signals, []
    cpu = telemetry.cpu
    if cpu:
        lines.append(
            f"CPU steal {cpu.steal_share:.1%} of CPU time, other processes "
            f"{cpu.outside_load_cores:.2f} cores busy (whole timed region)"
        )
    gpu_parts = [
        f"{label} {_range(signals[key], unit)}"
        for key, label, unit in (
            ("gpu.sm_clock_mhz", "SM clock", "MHz"),
            ("gpu.power_w", "power", "W"),
            ("gpu.temperature_c", "temperature", "C"),
            ("gpu.utilization_pct", "utilisation", "%"),
        )
        if key in signals
    ]
    if gpu_parts:
        lines.append("GPU " + "; ".join(gpu_parts))
    for source, energy in telemetry.energy.items():
        if energy.joules is not None:
            per = energy.j_per_sample
            lines.append(
                f"{source.upper()} energy {energy.joules:.3g} J"
                + (f", {per:.3g} J/sample" if per is not None else "")
                + f" ({energy.method})"
            )
        elif source == "cpu" or telemetry.gpu is not None:
            lines.append(f"{source.upper()} energy unavailable: {energy.unavailable}")
    return lines


def describe_clock(m: Measurement) -> str:
    if m.clock == "per-step":
        return f"per-step: {len(m.times)} steps, the device synced before and after each"
    return (
        f"blocked: {len(m.times)} blocks of {m.steps_per_sample} step(s), the device synced "
        "only at each block's ends"
    )


def flop_rate_text(flops_per_s: float) -> str:
    if flops_per_s >= 1e12:
        return f"{flops_per_s / 1e12:.4g} TFLOP/s"
    return f"{flops_per_s / 1e9:.4g} GFLOP/s"


def flops_lines(r: StepResult) -> list[str]:
    """The counted FLOPs and the rate they were done at; what checkpointing recomputed; for a
    sequence model, 6·N·tokens beside the model's FLOPs and the difference (attention's L²
    products, and what the rule leaves out); MFU (and HFU when something was recomputed)."""
    if r.flops_per_step is None:
        return []
    lines = [
        f"  FLOPs         {r.flops_per_step / 1e9:.4g} GFLOP per step (counted by torch's "
        f"FlopCounterMode), {flop_rate_text(r.flops_per_s)} achieved"
    ]
    if r.recomputed_flops_per_step:
        lines.append(
            f"  recomputed    {r.recomputed_flops_per_step / 1e9:.4g} GFLOP of them "
            f"({r.recomputed_flops_per_step / r.flops_per_step:.1%}): the checkpointed modules' "
            "forward pass again in backward; the model's own FLOPs are "
            f"{r.model_flops_per_step / 1e9:.4g} GFLOP"
        )
    rule, model_flops = r.rule_of_thumb_flops, r.model_flops_per_step
    if rule:
        n = "6" if r.spec.mode == "train" else "2"
        lines.append(
            f"  {n}·N·tokens    {rule / 1e9:.4g} GFLOP per step; counted - rule: "
            f"{(model_flops - rule) / 1e9:+.4g} GFLOP ({model_flops / rule - 1:+.1%}: "
            "attention's L² products, less what N counts but no token multiplies)"
        )
    for name, share in (("MFU", r.mfu), ("HFU", r.hfu)):
        if share is None:
            continue
        low, high = share.ci95
        lines.append(
            f"  {name}           {share.samples_per_s:.1%} (95% CI {low:.1%} to {high:.1%}) of "
            f"{flop_rate_text(r.peak.flops_per_s)} peak ({r.peak.source})"
        )
    if r.peak is None:
        lines.append(
            f"  MFU           not known: no peak FLOP/s for {r.device_name} in "
            f"{r.spec.precision} (give --peak-tflops)"
        )
    return lines


SHORT_PHASE_NAMES = {"forward": "fwd", "backward": "bwd", "all_reduce": "comm", "optimizer": "opt"}


def phase_lines(r: StepResult) -> list[str]:
    """Each phase's median and share, and whether they add up to the plain step."""
    if r.phases is None:
        return []
    p = r.phases
    lines = [f"  phases        {len(p.step_times)} phased steps after the timed ones ({p.method}):"]
    for phase in p.times:
        lines.append(
            f"    {PHASE_NAMES[phase]:<16} {p.median(phase) * 1e3:9.4g} ms median  "
            f"{p.share(phase):6.1%}"
        )
    gap, noise = r.phase_gap
    verdict = "within the noise" if abs(gap) <= noise else "NOT within the noise"
    lines.append(
        f"    {'added up':<16} {p.total * 1e3:9.4g} ms; the plain step's median "
        f"{r.measurement.time.median * 1e3:.4g} ms ({gap:+.1%}: {verdict}, ±{noise:.0%})"
    )
    return lines


def describe_step_result(r: StepResult) -> str:
    m = r.measurement
    t, rate = m.time, m.throughput
    warm = r.warmup
    lines = [
        f"{r.spec.label} on {r.device_name}",
        f"  clock         {describe_clock(m)}",
        f"  step time     {plus_minus(t, 1e-3)} ms  (median {t.median * 1e3:.4g} ms, "
        f"IQR {t.iqr * 1e3:.4g} ms, 95% CI {t.ci95_low * 1e3:.4g} to {t.ci95_high * 1e3:.4g} ms, "
        f"n={t.n})",
        f"  samples/s     {with_ci(rate)}  (95% CI; {rate.samples} samples in "
        f"{format_time(rate.seconds)}, {m.samples_per_step} per step)",
        f"  iterations/s  {rate_text(m.iterations_per_second)}",
        *(
            [
                f"  tokens/s      {with_ci(r.token_throughput)}  (95% CI; "
                f"{r.workload.tokens_per_sample} tokens per sequence, a sample)"
            ]
            if r.token_throughput
            else []
        ),
        f"  peak memory   {r.memory.peak_bytes / MiB:.0f} MiB ({r.memory.source})",
        *flops_lines(r),
        *phase_lines(r),
    ]
    if r.distributed:
        d = r.distributed
        comm = (
            f"; all-reduce {d.comm_share:.0%} of a step (no_sync method)"
            if d.comm_share is not None
            else ""
        )
        lines.insert(
            1,
            f"  data parallel {d.world_size} ranks ({d.backend}), per-rank batch "
            f"{d.per_rank_batch} x {d.accumulation_steps} accumulation = global batch "
            f"{d.global_batch_size}; each sample the slowest rank's; straggler spread "
            f"{d.straggler_spread:.3f} (slowest/median rank){comm}",
        )
    if r.workload:
        w = r.workload
        shape = "x".join(map(str, w.input_shape))
        lines.insert(
            1,
            f"  model         {w.identity}, {w.parameters:,} parameters, {w.input_dtype} input "
            f"{shape}, {w.num_classes} classes",
        )
    train = r.spec.mode == "train"
    if warm:
        what = "cuDNN autotuning, allocator growth" + (", optimizer state" if train else "")
        if r.spec.compile:
            what = "torch.compile's compilation included"
        if r.memory.source == "cpu_tensor_peak":
            what += "; memory profiled until the last warm-up step"
        lines.append(
            f"  warm-up       {warm.steps} steps, not in the statistics; first step "
            f"{format_time(warm.first_call_s)} ({what})"
            + (
                f"; {warm.skipped_updates} update(s) skipped by GradScaler"
                if warm.skipped_updates
                else ""
            )
        )
    if train:
        lines.append(
            f"  skipped steps {r.skipped_steps} (optimizer updates that GradScaler skipped inside "
            "the clock)"
        )
    if r.telemetry:
        lines += [f"  telemetry     {line}" for line in describe_telemetry(r.telemetry)]
    lines += [f"  warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def experiment_rows(result: ExperimentResult) -> pd.DataFrame:
    """B3's results table: train, inference and combined time, plus what each phase processed."""
    cfg, step = result.config, result.config.step
    return pd.DataFrame(
        [
            {
                "model": step.model,
                "batch": step.batch_size,
                "precision": step.precision,
                "epochs": cfg.num_epochs,
                "train s": plus_minus(result.seconds("train")),
                "inference s": plus_minus(result.seconds("inference")),
                "combined s": plus_minus(result.seconds("combined")),
                "train samples": result.samples("train"),
                "train samples/s (95% CI)": with_ci(result.throughput("train")),
                "inference samples": result.samples("inference"),
                "inference samples/s (95% CI)": with_ci(result.throughput("inference")),
                "runs": len(result.runs),
            }
        ]
    )


def to_text(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False)


QUARTILE_NOTE = (
    f"b3's IQR uses quartiles by {QUARTILES}; pytest-benchmark's IQR column uses its own "
    "quartile rule, so the two can differ on the same rounds"
)
