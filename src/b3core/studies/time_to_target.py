"""Which batch reaches the target accuracy soonest on the target machine: steps to target from
a convergence study times the time of one update from a sweep.

Steps to target barely depend on the hardware, step time does: a study run anywhere (a
laptop's CPU) joined with a sweep on the target GPU predicts that GPU's time to target. It
breaks where the update is not the same on both: BatchNorm over micro-batches (accumulation
changes what it normalises over), a different precision, or a data pipeline slower than the
step (a sweep times the step alone).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from b3core.studies.converge_runs import ConvergeRun
from b3core.studies.sweep import SweepResult


@dataclass(frozen=True)
class Prediction:
    batch_size: int  # per update, as the study trained it
    runs: int
    reached: int  # runs that reached the target
    steps_to_target: float  # mean over the runs that reached it
    micro_batch: int  # what one forward/backward takes on the target machine
    accumulation_steps: int
    step_s: float  # one update on the target machine
    seconds: float  # predicted time to target
    measured: bool  # the sweep timed this very update; else k micro-steps of a swept size
    lr: float  # the rate the study trained this batch at (its rule's), and its warm-up
    warmup_updates: int

    @property
    def all_reached(self) -> bool:
        return self.reached == self.runs

    def to_dict(self) -> dict:
        return asdict(self)


def _update_seconds(sweep: SweepResult, batch: int, largest_safe: int | None):
    """(micro-batch, accumulation, seconds per update, measured) for an update of `batch`
    samples, or None. A swept step of exactly that many samples per update, within the safe
    size; else the largest safe swept size that divides it, run batch/size times (an upper
    bound: the optimizer step counted each time)."""
    fits = [
        r
        for r in sweep.for_mode("train")
        if largest_safe is None or r.spec.batch_size <= largest_safe
    ]

    def update_s(r) -> float:
        m = r.measurement
        return m.samples_per_step / m.throughput.samples_per_s

    for r in fits:
        if r.measurement.samples_per_step == batch:
            return r.spec.batch_size, r.spec.accumulation_steps, update_s(r), True
    single = [r for r in fits if r.spec.accumulation_steps == 1 and batch % r.spec.batch_size == 0]
    if not single:
        return None
    r = max(single, key=lambda r: r.spec.batch_size)
    k = batch // r.spec.batch_size
    return r.spec.batch_size, k, k * update_s(r), False


def predict(
    runs: list[ConvergeRun], sweep: SweepResult, largest_safe: int | None
) -> list[Prediction]:
    """A prediction for every studied batch that reached the target at least once and that
    the sweep can time."""
    out = []
    for batch in sorted({run.batch_size for run in runs}):
        group = [run for run in runs if run.batch_size == batch]
        reached = [run.steps_to_target for run in group if run.steps_to_target is not None]
        timing = _update_seconds(sweep, batch, largest_safe)
        if not reached or timing is None:
            continue
        micro, k, step_s, measured = timing
        steps = statistics.mean(reached)
        out.append(
            Prediction(
                batch,
                len(group),
                len(reached),
                steps,
                micro,
                k,
                step_s,
                steps * step_s,
                measured,
                group[0].peak_lr,
                group[0].warmup_updates,
            )
        )
    return out


def fastest(predictions: list[Prediction]) -> Prediction | None:
    """The least predicted time among batches that every seed took to the target."""
    return min((p for p in predictions if p.all_reached), key=lambda p: p.seconds, default=None)
