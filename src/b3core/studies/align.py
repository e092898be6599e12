"""`b3 align`: is an aligned batch size faster per sample than its neighbours? An answer, not an
absence of evidence.

Each epoch is a fresh worker process that builds and warms every size (B-1, B, B+1 for each B
asked, and B-8, B+8 with multiples of 8), then times cycles of blocks: every size once per
cycle, in a random order, for `epoch_s` seconds (at least MIN_CYCLES cycles). Within an epoch
the sizes share the process and the moment, so each comparison's estimate is the
Hodges-Lehmann centre of its cycles' log ratios of samples/s; fresh processes across epochs
turn the process effect into noise that the spread of the epochs measures.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import stats as sps

from b3core.errors import B3Error
from b3core.spec.step import MIN_WARMUP, Record, StepSpec, option
from b3core.spec.validate import parse_fraction, parse_positive_int, parse_seconds
from b3core.studies.alignment import DEFAULT_MARGIN, relative_verdict
from b3core.studies.compare.interleave import block_shape
from b3core.studies.compare.verdict import LookPlan, hodges_lehmann
from b3core.studies.compare.workers import CaseFailed

INCONCLUSIVE = "inconclusive"
EXIT_CODES = {"faster": 0, "slower": 0, "equivalent": 0, INCONCLUSIVE: 3}
OUT_OF_MEMORY_EXIT = 1  # as every b3 command's step that does not fit
MIN_CYCLES = 2  # per epoch: each size timed at least twice
MULTIPLE = 8


@dataclass(frozen=True)
class AlignSettings(Record):
    """How `b3 align` runs and judges; each field's command-line form is declared here."""

    margin: float = field(
        default=DEFAULT_MARGIN,
        metadata=option(
            "--margin",
            parse=parse_fraction,
            help="differences within ±this are equivalent, e.g. 0.02 or 2%% "
            f"(default {DEFAULT_MARGIN:g})",
        ),
    )
    max_time_s: float = field(
        default=180.0,
        metadata=option(
            "--max-time",
            parse=parse_seconds,
            metavar="SECONDS",
            help="seconds for the whole run, process starts included, before the undecided "
            "comparisons are called inconclusive (default 180)",
        ),
    )
    epoch_s: float = field(
        default=3.0,
        metadata=option(
            "--epoch-time",
            parse=parse_seconds,
            metavar="SECONDS",
            help="seconds of timed blocks per fresh worker process (default 3)",
        ),
    )
    min_epochs: int = field(
        default=5,
        metadata=option(
            "--min-epochs",
            parse=lambda text: parse_positive_int("value", text, 3),
            help="fresh processes before the first look (at least 3; default 5)",
        ),
    )
    alpha: float = field(
        default=0.05,
        metadata=option(
            "--alpha",
            parse=parse_fraction,
            help="error rate of all the verdicts together, over all looks (default 0.05)",
        ),
    )
    multiples_of_8: bool = field(
        default=False,
        metadata=option(
            "--multiples-of-8", action="store_true", help="also compare each B with B-8 and B+8"
        ),
    )
    seed: int = field(
        default=0, metadata=option("--seed", type=int, help="seed of the orders drawn at random")
    )
    warmup: int = MIN_WARMUP


def comparisons_around(
    around: Sequence[int], multiples_of_8: bool = False
) -> list[tuple[int, int]]:
    """(aligned, neighbour) pairs: B against B-1 and B+1, and against B-8 and B+8 if asked."""
    pairs: list[tuple[int, int]] = []
    for size in around:
        if size < 2:
            raise B3Error(f"--around {size}: there is no batch size B-1 below it")
        steps = (1, MULTIPLE) if multiples_of_8 and size > MULTIPLE else (1,)
        for step in steps:
            for neighbour in (size - step, size + step):
                if (size, neighbour) not in pairs:
                    pairs.append((size, neighbour))
    return pairs


@dataclass
class NeighbourVerdict:
    """One comparison: the aligned size's samples/s over the neighbour's."""

    aligned: int
    neighbour: int
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
        self.ci = (math.exp(mean - half), math.exp(mean + half))
        self.level = 1 - 2 * look_alpha
        self.verdict = relative_verdict(*self.ci, self.margin)
        if self.decided:
            self.decided_at = n

    @property
    def not_ruled_out(self) -> float | None:
        return None if self.ci is None else max(self.ci[1] - 1, 1 - self.ci[0])

    def describe(self) -> str:
        if self.ci is None:
            return f"{self.aligned} against {self.neighbour}: not looked at (too few epochs)"
        interval = f"{100 * (self.ci[0] - 1):+.1f}% to {100 * (self.ci[1] - 1):+.1f}%"
        if self.verdict == "equivalent":
            return (
                f"{self.aligned} is equivalent to {self.neighbour} within "
                f"±{100 * self.margin:g}% ({interval})"
            )
        if self.verdict == INCONCLUSIVE:
            return (
                f"between {self.aligned} and {self.neighbour} differences up to "
                f"{100 * self.not_ruled_out:.1f}% could not be ruled out ({interval})"
            )
        than = "faster" if self.verdict == "faster" else "slower"
        return (
            f"{self.aligned} is {than} than {self.neighbour} by "
            f"{100 * abs(self.ratio - 1):.1f}% ({interval})"
        )

    def to_dict(self) -> dict:
        return {
            **self.__dict__,
            "ci": list(self.ci) if self.ci else None,
            "not_ruled_out": self.not_ruled_out,
        }


@dataclass
class AlignRun:
    """What a run measured and decided; it fills as blocks arrive, so an interrupt keeps them."""

    spec: StepSpec  # the case; each size's step is this with its batch size
    settings: AlignSettings
    comparisons: list[NeighbourVerdict]
    blocks: list[dict] = field(default_factory=list)  # epoch, cycle, size, times_s (per step)
    shapes: dict[int, tuple[int, int]] = field(default_factory=dict)  # steps/call, calls/block
    epochs: int = 0
    looks: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    worker: dict = field(default_factory=dict)  # the first worker's hello: b3core, machine
    failure: str | None = None

    @property
    def sizes(self) -> list[int]:
        return sorted({size for c in self.comparisons for size in (c.aligned, c.neighbour)})

    @property
    def exit_code(self) -> int:
        if self.failure:
            return OUT_OF_MEMORY_EXIT
        return max(EXIT_CODES[c.verdict] for c in self.comparisons)

    def to_dict(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "settings": self.settings.to_dict(),
            "sizes": self.sizes,
            "epochs": self.epochs,
            "elapsed_s": self.elapsed_s,
            "looks": self.looks,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "failure": self.failure,
            "worker": self.worker,
            "shapes": {str(size): list(shape) for size, shape in self.shapes.items()},
            "blocks": self.blocks,
        }


class AlignWorker(Protocol):
    """A fresh process that holds several steps (the step endpoint, version 2 or later)."""

    def ask(self, op: str, **arguments) -> dict: ...

    def retire(self) -> None: ...

    def close(self) -> None: ...


def _run_epoch(worker: AlignWorker, out: AlignRun, rng: random.Random, began: float,
               clock: Callable[[], float]) -> dict[int, list[float]]:  # fmt: skip
    """Build and warm every size in a random order, settle each, then time cycles; each
    block's samples/s per size, in cycle order."""
    settings, sizes = out.settings, out.sizes

    def ask(size: int, op: str, **arguments) -> dict:
        try:
            return worker.ask(op, key=str(size), **arguments)
        except CaseFailed as failed:
            raise CaseFailed(failed.side, f"batch {size}: {failed.message}") from None

    for size in rng.sample(sizes, len(sizes)):
        spec = out.spec.replace(batch_size=size).to_dict()
        reply = ask(size, "prepare", spec=spec, warmup=settings.warmup, seed=0)
        out.shapes.setdefault(size, block_shape(reply["step_s"], "blocked"))
    for size in rng.sample(sizes, len(sizes)):
        ask(size, "block", calls=1, steps=out.shapes[size][0])
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    timed_began = clock()
    for cycle in itertools.count():
        if cycle >= MIN_CYCLES and (
            clock() - timed_began >= settings.epoch_s or clock() - began >= settings.max_time_s
        ):
            break
        for size in rng.sample(sizes, len(sizes)):
            steps, calls = out.shapes[size]
            times = ask(size, "block", calls=calls, steps=steps)["times"]
            out.blocks.append({"epoch": out.epochs, "cycle": cycle, "size": size, "times_s": times})
            rates[size].append(size / statistics.median(times))
    return rates


def run_align(
    spec: StepSpec,
    settings: AlignSettings,
    pairs: Sequence[tuple[int, int]],
    start_worker: Callable[[], AlignWorker],
    clock: Callable[[], float] = time.monotonic,
    out: AlignRun | None = None,
) -> AlignRun:
    """Epochs of fresh workers until every comparison is decided or the time is up. `out`
    (made here unless given) fills as blocks arrive, so an interrupt keeps what was timed."""
    out = out or AlignRun(
        spec, settings, [NeighbourVerdict(a, n, settings.margin) for a, n in pairs]
    )
    rng = random.Random(settings.seed)
    began, plan = clock(), None
    while True:
        epoch_began = clock()
        worker = start_worker()
        try:
            if not out.worker:
                out.worker = worker.ask("hello")
            rates = _run_epoch(worker, out, rng, began, clock)
        except CaseFailed as failed:  # a size that does not fit: nothing more to compare
            out.failure = failed.message
            break
        finally:
            worker.retire()
            worker.close()
        out.epochs += 1
        for c in out.comparisons:
            logs = np.log(rates[c.aligned]) - np.log(rates[c.neighbour])
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


def fresh_worker() -> AlignWorker:
    """A fresh interpreter of this b3core, which imports the user's code from the current
    folder (its src/ if it has one), as compare's workers do."""
    import sys
    from pathlib import Path

    from b3core.studies.compare.settings import FIXED_MALLOC
    from b3core.studies.compare.sides import WORKTREE, Side, SideSpec
    from b3core.studies.compare.workers import ExecWorker

    return ExecWorker(Side(SideSpec("align", WORKTREE, sys.executable), Path.cwd(), None),
                      env=dict(FIXED_MALLOC))  # fmt: skip
