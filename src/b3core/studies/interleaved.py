"""Interleaved steps in shared fresh processes, compared with sequential statistics: the engine
of `b3 align` (a batch size against its neighbours) and `b3 plan` (candidate configurations).

Each epoch is a fresh worker process that builds and warms every unit (a named StepSpec), then
times cycles of blocks: every unit once per cycle, in a random order, for `epoch_s` seconds (at
least MIN_CYCLES cycles). A block is one timed call, as few steps as the clock allows
(measuring/clocks.py), so the units alternate at the finest grain: a fresh process's first
seconds are its noisiest, and longer blocks let a slow moment fall on one unit and not another
(docs/results/README.md, "b3 align"). Within an epoch the units share the process and the
moment, so each comparison's estimate is the Hodges-Lehmann centre of its cycles' log ratios
of samples/s; fresh processes across epochs turn the process effect into noise that the spread
of the epochs measures.

Each comparison is decided on a t interval over its epochs' estimates. Looks come at planned
epoch counts (the first at `min_epochs`); each spends a share of alpha / 2m at each end of the
interval (Bonferroni over the m comparisons and both directions, and alpha spending over the
looks: compare's LookPlan), so that all the verdicts together are wrong with probability at
most alpha; a comparison that a look decides keeps the interval that decided it. A decision
interval inside ±margin is *equivalent* (two one-sided tests at the look's level), one wholly
beyond the margin *faster* or *slower*; the rest stays *inconclusive*, with the largest
difference it could not rule out. It runs until every comparison is decided or the time is up.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import stats as sps

from b3core.measuring.clocks import block_steps_for
from b3core.spec.step import MIN_WARMUP, Record, StepSpec, option
from b3core.spec.validate import parse_fraction, parse_positive_int, parse_seconds
from b3core.studies.alignment import DEFAULT_MARGIN, relative_verdict
from b3core.studies.compare.verdict import LookPlan, hodges_lehmann
from b3core.studies.compare.workers import CaseFailed

INCONCLUSIVE = "inconclusive"
EXIT_CODES = {"faster": 0, "slower": 0, "equivalent": 0, INCONCLUSIVE: 3}
OUT_OF_MEMORY_EXIT = 1  # as every b3 command's step that does not fit
MIN_CYCLES = 2  # per epoch: each unit timed at least twice


@dataclass(frozen=True)
class InterleaveSettings(Record):
    """How interleaved units are timed and judged; each field's command-line form is here."""

    margin: float = field(
        default=DEFAULT_MARGIN,
        metadata=option(
            "--margin",
            parse=parse_fraction,
            help="differences within ±this are equivalent, e.g. 0.02 or 2%%",
        ),
    )
    max_time_s: float = field(
        default=180.0,
        metadata=option(
            "--max-time",
            parse=parse_seconds,
            metavar="SECONDS",
            help="seconds of interleaved timing, process starts included, before the "
            "undecided comparisons are called inconclusive",
        ),
    )
    epoch_s: float = field(
        default=3.0,
        metadata=option(
            "--epoch-time",
            parse=parse_seconds,
            metavar="SECONDS",
            help="seconds of timed blocks per fresh worker process",
        ),
    )
    min_epochs: int = field(
        default=5,
        metadata=option(
            "--min-epochs",
            parse=lambda text: parse_positive_int("value", text, 3),
            help="fresh processes before the first look (at least 3)",
        ),
    )
    alpha: float = field(
        default=0.05,
        metadata=option(
            "--alpha",
            parse=parse_fraction,
            help="error rate of all the verdicts together, over all looks",
        ),
    )
    seed: int = field(
        default=0, metadata=option("--seed", type=int, help="seed of the orders drawn at random")
    )
    warmup: int = MIN_WARMUP


@dataclass
class Comparison:
    """One comparison: unit `first`'s samples/s over unit `second`'s."""

    first: str
    second: str
    margin: float
    epoch_log_ratios: list[float] = field(default_factory=list)  # one estimate per epoch
    ratio: float | None = None
    ci: tuple[float, float] | None = None  # the decision interval of the last look it had
    level: float | None = None  # that interval's two-sided level
    verdict: str = INCONCLUSIVE
    decided_at: int | None = None  # epochs in at the look that decided it

    @property
    def decided(self) -> bool:
        return self.verdict != INCONCLUSIVE

    def look(self, look_alpha: float) -> None:
        """Judge the epochs so far at this look's level (each end errs look_alpha)."""
        logs = np.asarray(self.epoch_log_ratios, float)
        mean, n = float(logs.mean()), len(logs)
        half = float(sps.t.ppf(1 - look_alpha, n - 1)) * float(logs.std(ddof=1)) / math.sqrt(n)
        self.ratio = math.exp(mean)
        with np.errstate(over="ignore"):  # a tiny --alpha over few epochs: an infinite end
            self.ci = (float(np.exp(mean - half)), float(np.exp(mean + half)))
        self.level = 1 - 2 * look_alpha
        self.verdict = relative_verdict(*self.ci, self.margin)
        if self.decided:
            self.decided_at = n

    @property
    def not_ruled_out(self) -> float | None:
        return None if self.ci is None else max(self.ci[1] - 1, 1 - self.ci[0])

    def describe(self) -> str:
        if self.ci is None:
            return f"{self.first} against {self.second}: not looked at (too few epochs)"
        interval = f"{100 * (self.ci[0] - 1):+.1f}% to {100 * (self.ci[1] - 1):+.1f}%"
        if self.verdict == "equivalent":
            return (
                f"{self.first} is equivalent to {self.second} within "
                f"±{100 * self.margin:g}% ({interval})"
            )
        if self.verdict == INCONCLUSIVE and (self.ci[0] > 1 or self.ci[1] < 1):
            than = "faster" if self.ci[0] > 1 else "slower"
            return (
                f"{self.first} is {than} than {self.second} ({interval}), but not shown to be "
                f"by more than the ±{100 * self.margin:g}% margin"
            )
        if self.verdict == INCONCLUSIVE:
            return (
                f"between {self.first} and {self.second} differences up to "
                f"{100 * self.not_ruled_out:.1f}% could not be ruled out ({interval})"
            )
        than = "faster" if self.verdict == "faster" else "slower"
        return (
            f"{self.first} is {than} than {self.second} by "
            f"{100 * abs(self.ratio - 1):.1f}% ({interval})"
        )

    def to_dict(self) -> dict:
        return {
            **self.__dict__,
            "ci": list(self.ci) if self.ci else None,
            "not_ruled_out": self.not_ruled_out,
        }


@dataclass
class InterleavedRun:
    """What a run measured and decided; it fills as blocks arrive, so an interrupt keeps them."""

    units: dict[str, StepSpec]  # name -> the step timed under it
    settings: InterleaveSettings
    comparisons: list[Comparison]
    blocks: list[dict] = field(default_factory=list)  # epoch, cycle, unit, times_s (per step)
    steps_per_block: dict[str, int] = field(default_factory=dict)  # a block is one timed call
    epochs: int = 0
    looks: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    worker: dict = field(default_factory=dict)  # the first worker's hello: b3core, machine
    failure: str | None = None
    world_size: int = 1  # ranks per worker (a torchrun world): each step is that many ranks'

    @property
    def exit_code(self) -> int:
        if self.failure:
            return OUT_OF_MEMORY_EXIT
        return max(EXIT_CODES[c.verdict] for c in self.comparisons)

    def unit_label(self, name: str) -> str:
        return name

    def samples_per_step(self, unit: str) -> int:
        """A step's samples over every rank of the worker."""
        return self.units[unit].samples_per_step * self.world_size

    def block_rate(self, block: dict) -> float:
        """A block's samples/s (a block is one timed call; its time is per step)."""
        return self.samples_per_step(block["unit"]) / statistics.median(block["times_s"])

    def rates(self, unit: str) -> list[float]:
        """The unit's samples/s in each of its blocks."""
        return [self.block_rate(b) for b in self.blocks if b["unit"] == unit]

    def to_dict(self) -> dict:
        return {
            "units": {name: spec.to_dict() for name, spec in self.units.items()},
            "settings": self.settings.to_dict(),
            "epochs": self.epochs,
            "elapsed_s": self.elapsed_s,
            "looks": self.looks,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "failure": self.failure,
            "worker": self.worker,
            "steps_per_block": self.steps_per_block,
            "blocks": self.blocks,
        }


class InterleaveWorker(Protocol):
    """A fresh process that holds several steps (the step endpoint, version 2 or later)."""

    def ask(self, op: str, **arguments) -> dict: ...

    def retire(self) -> None: ...

    def close(self) -> None: ...


def _run_epoch(worker: InterleaveWorker, out: InterleavedRun, rng: random.Random, began: float,
               clock: Callable[[], float]) -> dict[str, list[float]]:  # fmt: skip
    """Build and warm every unit in a random order, settle each, then time cycles; each
    block's samples/s per unit, in cycle order."""
    settings, names = out.settings, list(out.units)

    def ask(name: str, op: str, **arguments) -> dict:
        try:
            return worker.ask(op, key=name, **arguments)
        except CaseFailed as failed:
            raise CaseFailed(failed.side, f"{out.unit_label(name)}: {failed.message}") from None

    for name in rng.sample(names, len(names)):
        spec = out.units[name].to_dict()
        reply = ask(name, "prepare", spec=spec, warmup=settings.warmup, seed=0)
        out.steps_per_block.setdefault(name, block_steps_for(reply["step_s"]))
    for name in rng.sample(names, len(names)):
        ask(name, "block", calls=1, steps=out.steps_per_block[name])
    rates: dict[str, list[float]] = {name: [] for name in names}
    timed_began = clock()
    for cycle in itertools.count():
        if cycle >= MIN_CYCLES and (
            clock() - timed_began >= settings.epoch_s or clock() - began >= settings.max_time_s
        ):
            break
        for name in rng.sample(names, len(names)):
            times = ask(name, "block", calls=1, steps=out.steps_per_block[name])["times"]
            out.blocks.append({"epoch": out.epochs, "cycle": cycle, "unit": name, "times_s": times})
            rates[name].append(out.block_rate(out.blocks[-1]))
    return rates


def run_interleaved(
    out: InterleavedRun,
    start_worker: Callable[[], InterleaveWorker],
    clock: Callable[[], float] = time.monotonic,
) -> InterleavedRun:
    """Epochs of fresh workers until every comparison is decided or the time is up. `out`
    fills as blocks arrive, so an interrupt keeps what was timed."""
    settings = out.settings
    rng = random.Random(settings.seed)
    began, plan = clock(), None
    while True:
        epoch_began = clock()
        worker = start_worker()
        try:
            if not out.worker:
                out.worker = worker.ask("hello")
            rates = _run_epoch(worker, out, rng, began, clock)
        except CaseFailed as failed:  # a unit that does not fit: nothing more to compare
            out.failure = failed.message
            break
        finally:
            worker.retire()
            worker.close()
        out.epochs += 1
        for c in out.comparisons:
            logs = np.log(rates[c.first]) - np.log(rates[c.second])
            c.epoch_log_ratios.append(hodges_lehmann(logs))
        out.elapsed_s = clock() - began
        epoch_cost = clock() - epoch_began
        if plan is None:  # each end of each interval errs alpha / 2m over all the looks
            affordable = math.floor(settings.max_time_s / max(epoch_cost, 1e-9))
            plan = LookPlan.for_case(
                settings.min_epochs, affordable, settings.alpha / 2, len(out.comparisons)
            )
        last = out.epochs >= 2 and out.elapsed_s + epoch_cost > settings.max_time_s
        if not (last or plan.interim_due(out.epochs)):
            continue
        look_alpha = plan.spend(out.epochs, last)
        out.looks.append({"epochs": out.epochs, "alpha": look_alpha})
        for c in out.comparisons:
            if not c.decided:
                c.look(look_alpha)
        if last or all(c.decided for c in out.comparisons):
            break
    out.elapsed_s = clock() - began
    return out


def fresh_worker(world=None) -> InterleaveWorker:
    """A fresh interpreter of this b3core, which imports the user's code from the current
    folder (its src/ if it has one), as compare's workers do; a torchrun world of ranks given
    a compare World."""
    import sys
    from pathlib import Path

    from b3core.studies.compare.settings import FIXED_MALLOC
    from b3core.studies.compare.sides import WORKTREE, Side, SideSpec
    from b3core.studies.compare.workers import ExecWorker

    side = Side(SideSpec("interleaved", WORKTREE, sys.executable), Path.cwd(), None)
    return ExecWorker(side, world, env=dict(FIXED_MALLOC))
