"""`b3 plan`: which configuration reaches a global batch fastest within a memory budget?

The global batch N is micro-batch x accumulation x ranks; each lever setting (precision,
activation checkpointing, and on CUDA channels_last) multiplies the ways to make it. The plan:

1. enumerates every candidate (micro-batches that divide N / ranks, up to --max-accumulation
   micro-batches per update);
2. fits one memory model per lever setting from two probes (measured peaks at two micro-batches,
   the middle candidate and the largest but one, with accumulation, whose peak holds a full
   set of gradients) and predicts every candidate's peak;
3. per lever setting, measures the largest micro-batches predicted to fit (or near the budget)
   one by one, each with its real accumulation: its peak memory, FLOPs and phases, until
   --timed-per-lever of them fit. A candidate is called feasible only when measured, or when
   predicted more than NEAR_BUDGET below the budget. With --nproc-per-node the probes and
   these runs are worlds of that many ranks, as the timing is;
4. times the measured ones interleaved in shared fresh processes: the fastest of their single
   measured runs (data apart from what follows) against each other one, with the sequential
   statistics of b3 align and b3 compare (studies/interleaved.py);
5. names the fastest with its lead over the runner-up and the interval that decided it.

Smaller micro-batches of a lever than the ones timed are assumed slower per sample (more
accumulation steps of less work each): the plan says so, and --timed-per-lever widens it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from b3core.errors import B3Error, StepOutOfMemory
from b3core.measuring.isolation import measure_maybe_isolated
from b3core.measuring.memory import default_host_budget
from b3core.measuring.result import StepResult
from b3core.spec.step import StepSpec, Timing, option
from b3core.spec.validate import parse_positive
from b3core.studies.converge_runs import ConvergeRun
from b3core.studies.interleaved import (
    Comparison,
    InterleavedRun,
    InterleaveSettings,
    InterleaveWorker,
    run_interleaved,
)
from b3core.studies.lr_rules import LrRequest, scale_lr, warmup_steps
from b3core.studies.memory_model import MemoryFit, fit_memory
from b3core.workloads.build import resolve

NEAR_BUDGET = 0.15  # a prediction within this share of the budget is measured, not trusted
PROBE_ACCUMULATION = 2  # a probe's peak holds the gradients of an earlier micro-batch
# what each measured candidate's single run records: its peak, FLOPs and phases
CHECK_TIMING = Timing(repeats=1, warmup=2, block_steps=1, telemetry=False, phases=True)
_INHERITED = InterleaveSettings.__dataclass_fields__


def _interleave_field(name: str, default):
    """One of the engine's settings with the plan's own default (its option as declared)."""
    return field(default=default, metadata=_INHERITED[name].metadata)


@dataclass(frozen=True)
class PlanSettings(InterleaveSettings):
    """How `b3 plan` searches and times: the interleaved engine's settings (shorter, since a
    plan's units are whole updates of N samples) and the plan's own."""

    max_time_s: float = _interleave_field("max_time_s", 150.0)
    epoch_s: float = _interleave_field("epoch_s", 1.0)
    min_epochs: int = _interleave_field("min_epochs", 3)
    timed_per_lever: int = field(
        default=2,
        metadata=option(
            "--timed-per-lever",
            parse=parse_positive,
            help="micro-batches timed per lever setting, the largest that fit",
        ),
    )
    max_accumulation: int = field(
        default=64,
        metadata=option(
            "--max-accumulation",
            parse=parse_positive,
            help="the most micro-batches per update a candidate may take",
        ),
    )
    # MFU's denominator for a device not in the peak table (declared once, by Timing)
    peak_tflops: float | None = field(
        default=None, metadata=Timing.__dataclass_fields__["peak_tflops"].metadata
    )


@dataclass(frozen=True)
class Levers:
    """The settings tried besides the micro-batch: each combination is a lever setting."""

    precisions: tuple[str, ...]
    checkpointing: tuple[str, ...]
    channels_last: tuple[bool, ...] = (False,)

    def settings(self) -> list[dict]:
        return [
            {"precision": p, "activation_checkpointing": c, "channels_last": cl}
            for p in self.precisions
            for c in self.checkpointing
            for cl in self.channels_last
        ]


def world_of(ranks: int) -> int | None:
    """The data-parallel world that `ranks` ranks run as: None for one rank, which runs in a
    single process (as a command without --nproc-per-node does)."""
    return ranks if ranks > 1 else None


def lever_name(lever: dict) -> str:
    parts = [lever["precision"]]
    if lever["activation_checkpointing"] != "none":
        parts.append(f"ckpt-{lever['activation_checkpointing']}")
    if lever["channels_last"]:
        parts.append("channels_last")
    return " ".join(parts)


@dataclass
class Candidate:
    """One way to make the global batch, and what the plan learnt of it."""

    spec: StepSpec  # the micro-batch, its accumulation and the lever setting
    ranks: int
    predicted_peak: float | None = None
    result: StepResult | None = None  # its measured run: peak, FLOPs, phases
    feasible: bool | None = None  # None: not judged (no budget and not measured)
    why: str = ""
    timed: bool = False

    @property
    def name(self) -> str:
        s = self.spec
        ranks = f"x{self.ranks}r" if world_of(self.ranks) else ""
        return f"{s.batch_size}x{s.accumulation_steps}{ranks} {self.lever}"

    @property
    def lever(self) -> str:
        return lever_name(dataclasses.asdict(self.spec))

    @property
    def peak_bytes(self) -> int | None:
        return self.result.memory.peak_bytes if self.result else None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "spec": self.spec.to_dict(),
            "ranks": self.ranks,
            "predicted_peak_bytes": self.predicted_peak,
            "measured_peak_bytes": self.peak_bytes,
            "feasible": self.feasible,
            "why": self.why,
            "timed": self.timed,
            "result": self.result.to_dict() if self.result else None,
        }


def candidates_for(
    base: StepSpec, global_batch: int, ranks: int, levers: Levers, max_accumulation: int
) -> list[Candidate]:
    """Every (micro-batch, accumulation, lever setting) whose micro x accumulation x ranks is
    the global batch, largest micro-batch first; a global batch no candidate makes is one
    line."""
    if global_batch < 1:
        raise B3Error(f"--global-batch must be a positive integer, got {global_batch}")
    if global_batch % ranks:
        raise B3Error(f"N={global_batch} is not a multiple of the {ranks} ranks")
    per_rank = global_batch // ranks
    micros = [m for m in range(per_rank, 0, -1) if per_rank % m == 0]
    micros = [m for m in micros if per_rank // m <= max_accumulation]
    return [
        Candidate(
            base.replace(batch_size=m, accumulation_steps=per_rank // m, mode="train", **lever),
            ranks,
        )
        for lever in levers.settings()
        for m in micros
    ]


@dataclass
class LeverMemory:
    """A lever setting's memory model, fitted from its probes."""

    lever: str
    fit: MemoryFit | None
    probes: dict[int, int | None]  # micro-batch -> peak bytes (None: out of memory)

    def to_dict(self) -> dict:
        return {
            "lever": self.lever,
            "fit": self.fit.to_dict() if self.fit else None,
            "probes": {str(k): v for k, v in self.probes.items()},
        }


@dataclass
class Plan:
    """A plan's record, filled as it goes, so that an interrupt keeps what was measured."""

    base: StepSpec
    global_batch: int
    ranks: int
    memory_budget: int | None
    settings: PlanSettings
    candidates: list[Candidate] = field(default_factory=list)
    memory: list[LeverMemory] = field(default_factory=list)
    run: InterleavedRun | None = None
    lr: dict | None = None

    @property
    def timed(self) -> list[Candidate]:
        return [c for c in self.candidates if c.timed]

    def epoch_rates(self, name: str) -> list[float]:
        """The unit's samples/s in each interleaved epoch (the median of its blocks)."""
        epochs: dict[int, list[float]] = {}
        blocks = [b for b in self.run.blocks if b["unit"] == name]
        for rate, block in zip(self.run.rates(name), blocks):
            epochs.setdefault(block["epoch"], []).append(rate)
        return [statistics.median(rates) for rates in epochs.values()]

    def rate(self, candidate: Candidate) -> tuple[float, tuple[float, float] | None] | None:
        """samples/s over the interleaved epochs (the geometric mean of their medians), with
        its 95% t interval on the log scale (None from one epoch); None if not timed."""
        if self.run is None or not candidate.timed:
            return None
        logs = np.log(self.epoch_rates(candidate.name))
        if not len(logs):
            return None
        centre = float(np.exp(logs.mean()))
        if len(logs) < 2:
            return centre, None
        half = sps.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
        return centre, (float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half)))

    def mfu(self, candidate: Candidate) -> float | None:
        """The candidate's MFU at its interleaved samples/s: its measured run's model FLOPs
        per sample, times the rate, over the device's peak."""
        rate, r = self.rate(candidate), candidate.result
        if rate is None or r is None or r.model_flops_per_step is None or r.peak is None:
            return None
        per_sample = r.model_flops_per_step / candidate.spec.samples_per_step
        return per_sample * rate[0] / (r.peak.flops_per_s * self.ranks)  # per device

    def ranking(self) -> list[Candidate]:
        """The timed candidates, fastest first (by samples/s over the interleaved epochs)."""
        rated = [(self.rate(c), c) for c in self.timed]
        return [c for rate, c in sorted(((r, c) for r, c in rated if r), key=lambda t: -t[0][0])]

    def lead(self) -> Comparison | None:
        """The comparison of the fastest with the runner-up, as the fastest over it."""
        ranked = self.ranking()
        if len(ranked) < 2 or self.run is None:
            return None
        first, second = ranked[0].name, ranked[1].name
        for c in self.run.comparisons:
            if (c.first, c.second) == (first, second):
                return c
            if (c.first, c.second) == (second, first):
                return _reversed(c)
        return None

    def _rate_dict(self, c: Candidate) -> dict:
        rate = self.rate(c)
        if rate is None:
            return {"samples_per_s": None, "samples_per_s_ci95": None}
        return {"samples_per_s": rate[0], "samples_per_s_ci95": list(rate[1]) if rate[1] else None}

    def recommended(self) -> Candidate | None:
        """The fastest; when its lead over the runner-up is equivalence within the margin, the
        one of the two with the smaller peak memory (the stated tie-break)."""
        ranked, lead = self.ranking(), self.lead()
        if not ranked:
            return None
        if lead is not None and lead.verdict == "equivalent":
            return min(ranked[:2], key=lambda c: c.peak_bytes)
        return ranked[0]

    def to_dict(self) -> dict:
        chosen = self.recommended()
        lead = self.lead()
        return {
            "base": self.base.to_dict(),
            "global_batch": self.global_batch,
            "ranks": self.ranks,
            "memory_budget": self.memory_budget,
            "settings": self.settings.to_dict(),
            "memory_models": [m.to_dict() for m in self.memory],
            "candidates": [{**c.to_dict(), **self._rate_dict(c)} for c in self.candidates],
            "recommendation": {
                "name": chosen.name,
                "spec": chosen.spec.to_dict(),
                "samples_per_s": self.rate(chosen)[0],
                "fastest": self.ranking()[0].name,
                "lead": lead.to_dict() if lead else None,
                "lead_sentence": lead.describe() if lead else None,
            }
            if chosen
            else None,
            "lr": self.lr,
            "interleaved": self.run.to_dict() if self.run else None,
        }


def _reversed(c: Comparison) -> Comparison:
    """The same comparison read the other way round (ratios and interval inverted)."""
    flipped = Comparison(c.second, c.first, c.margin, [-x for x in c.epoch_log_ratios])
    flipped.level, flipped.decided_at = c.level, c.decided_at
    if c.ci is not None:
        flipped.ratio, flipped.ci = 1 / c.ratio, (1 / c.ci[1], 1 / c.ci[0])
    flipped.verdict = {"faster": "slower", "slower": "faster"}.get(c.verdict, c.verdict)
    return flipped


def measured_peak(
    spec: StepSpec, budget: int | None, peak_tflops: float | None = None, ranks: int = 1
) -> StepResult | None:
    """One run of the candidate (its peak, FLOPs and phases), or None if it did not fit. With
    several ranks it runs as that data-parallel world: a rank's peak holds DDP's gradient
    buckets as well, which one process would leave out."""
    try:
        # a user's own step (--train-step) has no phases to mark
        timing = CHECK_TIMING.replace(phases=not spec.train_step, peak_tflops=peak_tflops)
        return measure_maybe_isolated(
            spec, timing, isolate=False, memory_budget=budget, nproc_per_node=world_of(ranks)
        )
    except StepOutOfMemory:
        return None


def probe_sizes(micros: Sequence[int]) -> list[int]:
    """The micro-batches to fit a lever's memory line from, in the order to try them: the
    middle one of the candidates, then the largest below the largest, walking down when one
    does not fit (with few candidates, below the middle one). The largest predictions then
    extrapolate at most 2x past a probe, and the probes are past the small batches whose peak
    is the optimizer's update, flat in B."""
    ordered = sorted(set(micros))
    middle = ordered[len(ordered) // 2]
    return [middle, *(m for m in reversed(ordered[:-1]) if m != middle)]


def fit_lever(
    candidates: list[Candidate], on_probe: Callable[[str], None], guard: int | None = None
) -> LeverMemory:
    """Probe two micro-batches of the lever setting and fit its memory line. A probe may
    exceed the budget (it is only a probe), not `guard` (on CPU, the host's guard); past a
    probe that did not fit, only smaller ones are tried."""
    lever = candidates[0].lever
    probes: dict[int, int | None] = {}
    for micro in probe_sizes([c.spec.batch_size for c in candidates]):
        if any(p is None and micro >= m for m, p in probes.items()):
            continue
        spec = candidates[0].spec.replace(batch_size=micro, accumulation_steps=PROBE_ACCUMULATION)
        result = measured_peak(spec, guard, ranks=candidates[0].ranks)
        probes[micro] = result.memory.peak_bytes if result else None
        on_probe(f"probe {lever} micro-batch {micro}: " + (
            f"{probes[micro] / 2**20:.0f} MiB" if probes[micro] else "out of memory"))  # fmt: skip
        if sum(1 for p in probes.values() if p) == 2:
            break
    measured = {m: p for m, p in probes.items() if p}
    fit = fit_memory(list(measured), list(measured.values())) if len(measured) >= 2 else None
    return LeverMemory(lever, fit, probes)


def judge_lever(
    candidates: list[Candidate],
    memory: LeverMemory,
    budget: int | None,
    settings: PlanSettings,
    on_probe: Callable[[str], None],
) -> None:
    """Predict each candidate's peak; measure the largest that may fit until enough fit."""
    for c in candidates:
        c.predicted_peak = memory.fit.predict(c.spec.batch_size) if memory.fit else None
    found = 0
    for c in candidates:  # largest micro-batch first
        if found == settings.timed_per_lever:
            predicted_fits = c.predicted_peak is not None and (
                budget is None or c.predicted_peak <= budget * (1 - NEAR_BUDGET)
            )
            if predicted_fits:
                c.feasible, c.why = True, "fits (predicted); smaller than those timed"
            else:
                c.why = "not measured: smaller than those timed"
            continue
        if budget is not None and c.predicted_peak is not None:
            if c.predicted_peak > budget * (1 + NEAR_BUDGET):
                c.feasible = False
                c.why = f"does not fit (predicted {c.predicted_peak / 2**20:.0f} MiB)"
                continue
        c.result = measured_peak(c.spec, budget, settings.peak_tflops, c.ranks)
        if c.result is None:
            c.feasible, c.why = False, "does not fit (measured: out of memory)"
        else:
            c.feasible, c.timed, found = True, True, found + 1
            headroom = "" if budget is None else f", {(budget - c.peak_bytes) / 2**20:.0f} MiB free"
            c.why = f"fits (measured {c.peak_bytes / 2**20:.0f} MiB{headroom})"
        on_probe(f"{c.name}: {c.why}")


def run_plan(
    plan: Plan,
    levers: Levers,
    start_worker: Callable[[], InterleaveWorker],
    on_progress: Callable[[str], None] = lambda line: None,
    lr: LrRequest | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Plan:
    s = plan.settings
    plan.candidates = candidates_for(
        plan.base, plan.global_batch, plan.ranks, levers, s.max_accumulation
    )
    by_lever: dict[str, list[Candidate]] = {}
    for c in plan.candidates:
        by_lever.setdefault(c.lever, []).append(c)
    # on CPU the ranks share the host: each gets its share of the guard
    guard = (
        None if resolve(plan.base).device.type == "cuda" else default_host_budget() // plan.ranks
    )
    plan.memory = [fit_lever(group, on_progress, guard) for group in by_lever.values()]
    _check_state_fits(plan.memory, plan.base.model, plan.memory_budget)
    for group, memory in zip(by_lever.values(), plan.memory):
        judge_lever(group, memory, plan.memory_budget, s, on_progress)
    timed = plan.timed
    if not timed:
        budget = plan.memory_budget / 2**20 if plan.memory_budget else 0
        raise B3Error(
            f"no candidate makes N={plan.global_batch} within {budget:.0f} MiB: raise "
            "--max-accumulation, add --checkpointing blocks or a lower precision"
        )
    if lr is not None:
        plan.lr = lr_for(lr, plan.global_batch)
    units = {c.name: c.spec for c in timed}
    # the leader of the measured runs (data apart from the interleaved blocks) against each
    # other candidate: k - 1 comparisons, not all k(k - 1)/2 pairs
    leader = max(timed, key=lambda c: c.result.measurement.throughput.samples_per_s)
    pairs = [Comparison(leader.name, c.name, s.margin) for c in timed if c is not leader]
    plan.run = InterleavedRun(units, s, pairs, world_size=plan.ranks)
    if pairs:
        on_progress(
            f"timing {len(timed)} candidates interleaved ({len(pairs)} comparisons, "
            f"up to {s.max_time_s:g} s)"
        )
        run_interleaved(plan.run, start_worker, clock)
    return plan


def _check_state_fits(memories: list[LeverMemory], model: str, budget: int | None) -> None:
    """A budget below what the model holds before any sample (each lever's line's intercept,
    or its smallest probe when no line was fitted) is bad input, named in one line."""
    if budget is None:
        return
    floors = [
        m.fit.fixed_bytes if m.fit else min((p for p in m.probes.values() if p), default=math.inf)
        for m in memories
    ]
    if min(floors) > budget:
        raise B3Error(
            f"--memory-budget {budget / 2**20:.0f} MiB is below what {model} holds before any "
            f"sample ({min(floors) / 2**20:.0f} MiB: weights, gradients, optimizer state)"
        )


def lr_for(lr: LrRequest, global_batch: int) -> dict:
    """The learning rate (and warm-up) for the global batch, by advise's rules."""
    out = {
        "batch": global_batch,
        "rule": lr.rule,
        "base_lr": lr.base_lr,
        "base_batch": lr.base_batch,
        "lr": scale_lr(lr.base_lr, lr.base_batch, global_batch, lr.rule),
    }
    if lr.dataset_size:
        out["warmup_steps"] = warmup_steps(global_batch, lr.base_batch, lr.dataset_size)
    return out


def study_at(model: str, global_batch: int, folder: str) -> tuple[list[ConvergeRun], list[int]]:
    """A convergence study's runs at the global batch, and the steps to target of those that
    reached it; a study of another model, or with none that reached it there, is one line
    (checked before a plan runs, and again when it is read)."""
    from pathlib import Path

    from b3core.studies.converge import LOG_NAME, read_log

    header, runs = read_log(Path(folder) / LOG_NAME)
    studied = header["study"]["step"]["model"]
    if studied != model:
        raise B3Error(f"the study in {folder} trained {studied}, the plan is for {model}")
    at_n = [run for run in runs.values() if run.batch_size == global_batch]
    reached = [run.steps_to_target for run in at_n if run.steps_to_target is not None]
    if not reached:
        raise B3Error(
            f"the study in {folder} has no run at batch {global_batch} that reached its "
            f"target (batches: {sorted({run.batch_size for run in runs.values()})})"
        )
    return at_n, reached


def time_to_target(plan: Plan, folder: str) -> dict:
    """The predicted time to a convergence study's target at the global batch: its runs'
    mean steps to target there, times the recommended configuration's seconds per update."""
    at_n, reached = study_at(plan.base.model, plan.global_batch, folder)
    best = plan.recommended()
    update_s = plan.global_batch / plan.rate(best)[0]
    steps = statistics.mean(reached)
    return {
        "configuration": best.name,
        "runs": len(at_n),
        "reached": len(reached),
        "steps_to_target": steps,
        "update_s": update_s,
        "seconds": steps * update_s,
    }
