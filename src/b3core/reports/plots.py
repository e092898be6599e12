"""Plots of batch-size curves (PNG, matplotlib). Built from report frames; never measures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from b3core.spec.sizes import is_power_of_two

SERIES_KEYS = ["source", "model", "mode", "precision", "accum"]


def subplots(*grid, figsize, **options):
    """A figure and its axes, drawn off-screen: the user's matplotlib backend is left alone."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **options)


def mark_alignments(ax, batches: pd.Series) -> None:
    """Light lines at multiples of 8, darker dashed lines at powers of two."""
    low, high = int(batches.min()), int(batches.max())
    for b in range(max(8, low - low % 8), high + 1, 8):
        if low <= b <= high and not is_power_of_two(b):
            ax.axvline(b, color="0.85", linewidth=0.6, zorder=0)
    p = 1
    while p <= high:
        if p >= low:
            ax.axvline(p, color="tab:red", linestyle="--", linewidth=0.8, alpha=0.6, zorder=0)
        p *= 2


def _series(frame: pd.DataFrame):
    """(label, rows) per curve: one curve per source, model, mode, precision and accumulation."""
    keys = [k for k in SERIES_KEYS if k in frame and frame[k].notna().any()]
    for key, group in frame.groupby(keys, sort=False, dropna=False):
        values = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        parts = [str(values[k]) for k in keys if k != "accum"]
        if values.get("accum", 1) != 1:
            parts.append(f"acc{values['accum']}")
        yield "/".join(parts), group.sort_values("batch")


def _with_ci(ax, x: pd.Series, g: pd.DataFrame, column: str, label: str, scale: float = 1.0):
    """`column` against x with its 95% interval (`column`_ci95_low/high) as bars."""
    centre = g[column] * scale
    low = (centre - g[f"{column}_ci95_low"] * scale).fillna(0)
    high = (g[f"{column}_ci95_high"] * scale - centre).fillna(0)
    ax.errorbar(x, centre, yerr=[low, high], marker="o", markersize=3, capsize=2, label=label)


def plot_batch_curves(
    frame: pd.DataFrame, path: str | Path, *, memory_fit=None, title: str = ""
) -> Path:
    """samples/s (95% CI bars) and step time (SD bars) vs batch size; peak memory too when a
    fit (fixed, per_sample) is given, and MFU (95% CI bars) when the frame has it."""
    has_mfu = "mfu" in frame and frame["mfu"].notna().any()
    panels = 2 + (memory_fit is not None) + has_mfu
    fig, axes = subplots(panels, 1, figsize=(9, 3.2 * panels), sharex=True)
    rate_ax, time_ax = axes[0], axes[1]
    mfu_ax = axes[-1] if has_mfu else None
    for label, g in _series(frame):
        _with_ci(rate_ax, g["batch"], g, "samples_per_s", label)
        time_ax.errorbar(
            g["batch"],
            g["step_ms_mean"],
            yerr=g["step_ms_sd"].fillna(0),
            marker="o",
            markersize=3,
            capsize=2,
            label=label,
        )
        if mfu_ax is not None:
            _with_ci(mfu_ax, g["batch"], g, "mfu", label, scale=100)
    if mfu_ax is not None:
        mfu_ax.set_ylabel("MFU, % of peak FLOP/s (95% CI)")
    if "contended" in frame and frame["contended"].fillna(False).astype(bool).any():
        hit = frame[frame["contended"].fillna(False).astype(bool)]
        for ax, column in ((rate_ax, "samples_per_s"), (time_ax, "step_ms_mean")):
            ax.plot(
                hit["batch"], hit[column], "x", color="tab:red", markersize=9, zorder=5,
                label="contended (CPU steal or outside load, GPU throttling)",
            )  # fmt: skip
    rate_ax.set_ylabel("samples/s (total / time, 95% CI)")
    time_ax.set_ylabel("step time, ms (mean ± SD)")
    if memory_fit is not None:
        mem_ax = axes[2]
        mem_ax.plot(frame["batch"], frame["peak_mib"], "o", markersize=3, label="measured peak")
        fixed, per_sample = memory_fit
        xs = pd.Series(sorted(frame["batch"].unique()))
        mem_ax.plot(xs, (fixed + per_sample * xs) / 2**20, "-", label="fit a + b·B")
        mem_ax.set_ylabel("peak memory, MiB")
        mem_ax.legend(fontsize=7)
    for ax, column in ((rate_ax, "samples_per_s"), (time_ax, "step_ms_mean")):
        values = frame[column][frame[column] > 0]
        if not values.empty and values.max() / values.min() > 20:
            ax.set_yscale("log")  # models of very different speed share the figure
    for ax in axes:
        mark_alignments(ax, frame["batch"])
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("batch size (red dashed: powers of two; grey: multiples of 8)")
    rate_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def plot_tokens_over_lengths(frame: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """A sweep over lengths: tokens/s (95% CI bars) against the sequence length, one curve per
    batch size."""
    fig, ax = subplots(figsize=(8, 4.5))
    for batch, g in frame.groupby("batch"):
        g = g.sort_values("seq_len")
        _with_ci(ax, g["seq_len"], g, "tokens_per_s", f"batch {batch}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length, tokens")
    ax.set_ylabel("tokens/s (total / time, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
