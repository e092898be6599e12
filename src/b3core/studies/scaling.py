"""Scaling efficiency across world sizes: efficiency(N) = throughput(N) / (N x throughput(1)),
throughput being global samples over the slowest rank's time. Torch-free: it works on saved
results.

Weak scaling holds the per-rank batch; strong scaling holds the global batch (the per-rank
batch is the global one over N). The 95% interval resamples the timed blocks of both runs
independently (scipy's percentile bootstrap), each run's throughput the ratio estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from b3core.errors import B3Error
from b3core.measuring.result import StepResult
from b3core.measuring.stats import BOOTSTRAP_RESAMPLES

MODES = ("weak", "strong")


def per_rank_batch(batch_size: int, world_size: int, mode: str) -> int:
    """The per-rank micro-batch at a world size: held (weak) or the global one split (strong)."""
    if mode == "weak":
        return batch_size
    if batch_size % world_size:
        raise B3Error(
            f"strong scaling splits the global batch {batch_size} over {world_size} ranks: "
            "give a batch size that every world size divides"
        )
    return batch_size // world_size


@dataclass(frozen=True)
class Efficiency:
    world_size: int
    value: float
    ci95: tuple[float, float]


def efficiency(result: StepResult, reference: StepResult) -> Efficiency:
    """result's throughput over world_size x the reference's (a run at world size 1)."""
    n = result.distributed.world_size if result.distributed else 1
    base_n = reference.distributed.world_size if reference.distributed else 1
    if base_n != 1:
        raise B3Error(f"scaling efficiency needs a run at world size 1, not {base_n}")
    m, r = result.measurement, reference.measurement
    per_block = m.samples_per_step * m.steps_per_sample
    per_block_ref = r.samples_per_step * r.steps_per_sample

    def ratio(times, ref_times, axis=-1):
        rate = per_block / np.mean(times, axis=axis)
        rate_ref = per_block_ref / np.mean(ref_times, axis=axis)
        return rate / (n * rate_ref)

    value = float(ratio(np.asarray(m.times), np.asarray(r.times)))
    if len(m.times) < 2 or len(r.times) < 2:
        return Efficiency(n, value, (float("nan"), float("nan")))
    interval = sps.bootstrap(
        (np.asarray(m.times), np.asarray(r.times)),
        ratio,
        vectorized=True,
        paired=False,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    return Efficiency(n, value, (float(interval.low), float(interval.high)))
