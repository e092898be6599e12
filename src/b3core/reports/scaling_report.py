"""The scaling table and plot: throughput and efficiency per world size, from saved results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from b3core.measuring.result import StepResult
from b3core.reports.plots import subplots
from b3core.studies.scaling import efficiency


def scaling_frame(results: list[StepResult]) -> pd.DataFrame:
    """One row per world size; the efficiency is against the world-size-1 run."""
    reference = next(r for r in results if _world(r) == 1)
    rows = []
    for r in sorted(results, key=_world):
        eff = efficiency(r, reference)
        rate = r.measurement.throughput
        d = r.distributed
        rows.append(
            {
                "world_size": _world(r),
                "per_rank_batch": r.spec.batch_size,
                "global_batch": r.measurement.samples_per_step,
                "samples_per_s": rate.samples_per_s,
                "samples_per_s_ci95": f"{rate.ci95[0]:.4g} to {rate.ci95[1]:.4g}",
                "efficiency": eff.value,
                "efficiency_ci95": f"{eff.ci95[0]:.3f} to {eff.ci95[1]:.3f}",
                "straggler_spread": d.straggler_spread if d else None,
                "allreduce_share": d.comm_share if d else None,
            }
        )
    return pd.DataFrame(rows)


def _world(r: StepResult) -> int:
    return r.distributed.world_size if r.distributed else 1


def plot_scaling(frame: pd.DataFrame, path: Path, title: str) -> Path:
    fig, (rate_ax, eff_ax) = subplots(1, 2, figsize=(10, 4))
    rate_ax.plot(frame["world_size"], frame["samples_per_s"], "o-", label="measured")
    ideal = frame["samples_per_s"].iloc[0] * frame["world_size"]
    rate_ax.plot(frame["world_size"], ideal, "--", color="grey", label="linear")
    rate_ax.set_xlabel("ranks")
    rate_ax.set_ylabel("global samples/s")
    rate_ax.legend()
    eff_ax.plot(frame["world_size"], frame["efficiency"], "o-")
    eff_ax.axhline(1.0, ls="--", color="grey")
    eff_ax.set_xlabel("ranks")
    eff_ax.set_ylabel("efficiency = thr(N) / (N thr(1))")
    eff_ax.set_ylim(0, max(1.1, float(frame["efficiency"].max()) * 1.1))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
