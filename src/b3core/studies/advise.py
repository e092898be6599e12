"""`b3 advise`: which batch size to use, from measurements (a sweep, the memory model, and a
find-max-batch run when there is one), plus the learning rate and accumulation that go with it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from b3core.spec.sizes import is_power_of_two
from b3core.studies.alignment import log_ratio_interval
from b3core.studies.lr_rules import (  # noqa: F401 - LrRequest: advise's input
    LrRequest,
    accumulation_for,
    scale_lr,
    warmup_steps,
)
from b3core.studies.memory_model import MemoryFit
from b3core.studies.sweep import SweepResult

NEAR_BEST = 0.95
LEAD_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Lead:
    """The fastest batch's lead over the runner-up: the ratio of their samples/s, paired by
    the sweep's passes, with its interval; and, when the interval holds no lead at all, which
    of the two is chosen and why."""

    runner_up: int
    ratio: float
    ci_low: float
    ci_high: float
    passes: int
    tie_break: str | None = None  # "the power of two" or "the smaller peak memory"
    tie_winner: int | None = None

    @property
    def within_noise(self) -> bool:
        return self.ci_low <= 1

    def describe(self) -> str:
        lead = (
            f"ahead of {self.runner_up} by {100 * (self.ratio - 1):.1f}% "
            f"({LEAD_CONFIDENCE:.0%} CI {100 * (self.ci_low - 1):+.1f}% to "
            f"{100 * (self.ci_high - 1):+.1f}%, paired over {self.passes} passes)"
        )
        if not self.within_noise:
            return lead
        return f"{lead}: within the noise, so {self.tie_winner} is chosen for {self.tie_break}"


@dataclass(frozen=True)
class Advice:
    fastest_batch: int | None
    fastest_samples_per_s: float | None
    smallest_near_best: int | None
    largest_safe: int | None
    largest_safe_source: str
    chosen_batch: int | None
    lead: Lead | None = None  # None: no runner-up measured over at least 2 passes
    lr: float | None = None
    lr_rule: str | None = None
    warmup_steps: int | None = None
    target_batch: int | None = None
    accumulation_steps: int | None = None
    effective_batch: int | None = None
    accumulation_note: str | None = None

    def rows(self) -> list[tuple[str, str]]:
        def show(v, fmt="{}"):
            return "n/a" if v is None else fmt.format(v)

        rate = show(self.fastest_samples_per_s, "{:.1f} samples/s")
        fastest = f"{show(self.fastest_batch)} ({rate})"
        if self.lead:
            fastest += f", {self.lead.describe()}"
        rows = [
            ("fastest batch (highest samples/s)", fastest),
            (
                f"smallest batch within {100 - NEAR_BEST * 100:.0f}% of that",
                show(self.smallest_near_best),
            ),
            ("largest safe batch", f"{show(self.largest_safe)} ({self.largest_safe_source})"),
            ("chosen batch", show(self.chosen_batch)),
        ]
        if self.lr is not None:
            at = self.effective_batch or self.chosen_batch
            rows.append((f"learning rate for batch {at} ({self.lr_rule} rule)", f"{self.lr:.3g}"))
            rows.append(("warm-up steps", show(self.warmup_steps)))
        if self.target_batch is not None:
            rows.append(
                (
                    f"accumulation for effective batch {self.target_batch}",
                    f"{self.accumulation_steps} steps -> {self.effective_batch}",
                )
            )
        if self.accumulation_note:
            rows.append(("note", self.accumulation_note))
        return rows

    def to_dict(self) -> dict:
        return {**self.__dict__, "lead": dict(self.lead.__dict__) if self.lead else None}


def lead_of_the_fastest(sweep: SweepResult, ranked: list) -> Lead | None:
    """The fastest's lead over the runner-up (`ranked`: results, fastest first), with the
    tie-break when the lead is within the noise: the power of two if one of the two is one,
    else the smaller peak memory."""
    rates = sweep.rates("train")
    if len(ranked) < 2:
        return None
    first, second = ranked[0], ranked[1]
    a, b = rates.get(first.spec.batch_size, []), rates.get(second.spec.batch_size, [])
    passes = min(len(a), len(b))
    if passes < 2:
        return None
    ratio, low, high = log_ratio_interval(a[:passes], b[:passes], LEAD_CONFIDENCE)
    lead = Lead(second.spec.batch_size, ratio, low, high, passes)
    if not lead.within_noise:
        return lead
    powers = [r for r in (first, second) if is_power_of_two(r.spec.batch_size)]
    if len(powers) == 1:
        winner, why = powers[0], "the power of two"
    else:
        winner = min((first, second), key=lambda r: r.memory.peak_bytes)
        why = "the smaller peak memory"
    return dataclasses.replace(lead, tie_break=why, tie_winner=winner.spec.batch_size)


def advise(
    sweep: SweepResult,
    *,
    memory_fit: MemoryFit | None = None,
    memory_budget: int | None = None,
    found_max: int | None = None,
    safety_margin: float = 0.10,
    batch: int | None = None,
    lr: LrRequest | None = None,
    target_batch: int | None = None,
) -> Advice:
    # The largest safe batch: a measured edge when find-max-batch ran, else the memory model.
    if found_max:
        largest_safe, source = int(found_max * (1 - safety_margin)), "find-max-batch, with margin"
    elif memory_fit is not None and memory_budget:
        predicted = memory_fit.max_batch_for(memory_budget)
        largest_safe = int(predicted * (1 - safety_margin))
        source = "predicted by the memory model, with margin"
        stretch = memory_fit.extrapolation_note(predicted)
        source += f"; {stretch}" if stretch else ""
    else:
        largest_safe, source = None, "unknown: run find-max-batch or give --memory-budget"

    measured = [
        r
        for r in sweep.for_mode("train")
        if largest_safe is None or r.spec.batch_size <= largest_safe
    ]

    def rate(r) -> float:
        return r.measurement.throughput.samples_per_s

    ranked = sorted(measured, key=rate, reverse=True)
    fastest = ranked[0] if ranked else None
    lead = lead_of_the_fastest(sweep, ranked)
    near = None
    if fastest is not None:
        near = min(r.spec.batch_size for r in measured if rate(r) >= NEAR_BEST * rate(fastest))
    chosen = batch or (lead and lead.tie_winner) or (fastest.spec.batch_size if fastest else None)

    advice = dict(
        fastest_batch=fastest.spec.batch_size if fastest else None,
        fastest_samples_per_s=rate(fastest) if fastest else None,
        smallest_near_best=near,
        largest_safe=largest_safe,
        largest_safe_source=source,
        chosen_batch=chosen,
        lead=lead,
    )
    lr_batch = chosen
    if target_batch and chosen:
        k, effective = accumulation_for(target_batch, chosen)
        advice.update(target_batch=target_batch, accumulation_steps=k, effective_batch=effective)
        lr_batch = effective  # the optimizer sees the effective batch
        train = sweep.for_mode("train")
        workload = train[0].workload if train else None
        if k > 1 and workload and workload.batch_dependent_layers:
            advice["accumulation_note"] = (
                f"{train[0].spec.model} has BatchNorm, which sees only the micro-batch of "
                f"{chosen}: "
                f"accumulating to {effective} is not identical to a true batch of {effective}"
            )
    if lr is not None and lr_batch:
        advice.update(lr=scale_lr(lr.base_lr, lr.base_batch, lr_batch, lr.rule), lr_rule=lr.rule)
        if lr.dataset_size:
            advice["warmup_steps"] = warmup_steps(lr_batch, lr.base_batch, lr.dataset_size)
    return Advice(**advice)
