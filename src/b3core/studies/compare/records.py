"""What a comparison leaves behind: each case's blocks in run order and its verdict, and the
whole run's. Inert records, free of torch, so that reports and saved comparisons load light."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from b3core.spec.step import StepSpec
from b3core.studies.compare.settings import CompareSettings
from b3core.studies.compare.verdict import (
    INCONCLUSIVE,
    NOT_COMPARED,
    REGRESSION,
    Estimate,
    exit_code,
    overall_verdict,
    severity,
)

SIDES = ("base", "head")
STATISTIC = (
    "per pair of interleaved blocks, log(head block median) - log(base block median); per "
    "epoch (a fresh pair of worker processes), the Hodges-Lehmann estimate of its pairs; per "
    "round (a fresh pair of servers, or one epoch of fresh interpreters), the mean of its "
    "epochs'; ratio = exp(mean over rounds), Student's t on the rounds; each one-sided claim "
    "decided at the look's share of alpha / cases (alpha * f**2 spent by a fraction f of the "
    "planned rounds, the rest at the last look)"
)


@dataclass(frozen=True)
class Block:
    """One side's timed calls, in run order: seconds per step, and when the block began."""

    side: str
    pair: int
    epoch: int  # which pair of worker processes ran it
    started_s: float  # since the case began
    times: tuple[float, ...]  # under DDP each the slowest rank's
    rank_times: tuple[tuple[float, ...], ...] | None = None  # every rank's, under DDP
    round: int = 0  # which pair of servers forked those workers (see verdict)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def to_dict(self) -> dict:
        out = {
            "side": self.side,
            "pair": self.pair,
            "epoch": self.epoch,
            "round": self.round,
            "started_s": self.started_s,
            "times_s": list(self.times),
        }
        if self.rank_times is not None:
            out["rank_times_s"] = [list(times) for times in self.rank_times]
        return out


@dataclass
class CaseComparison:
    """A case's blocks and verdict; or why it could not be compared (`failure`)."""

    spec: StepSpec
    blocks: list[Block] = field(default_factory=list)
    estimate: Estimate | None = None
    steps_per_call: int = 1
    calls_per_block: int = 0
    elapsed_s: float = 0.0
    look_alphas: list[float] = field(default_factory=list)  # each look's level, in order
    planned_looks: int = 0
    prepared: dict = field(default_factory=dict)
    skipped_updates: dict = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    failure: str | None = None
    # each epoch: which worker started first, which was prepared first, and when it was timed
    epoch_log: list[dict] = field(default_factory=list)
    epochs_per_round: int = 1
    round_costs_s: list[float] = field(default_factory=list)  # each round's wall time
    outlook: dict | None = None  # at the first look: what the budget can decide (interleave)

    @property
    def round_cost_s(self) -> float:
        """What a round costs: the mean of the rounds so far."""
        costs = self.round_costs_s
        return sum(costs) / len(costs) if costs else 0.0

    @property
    def rounds(self) -> int:
        return len({b.round for b in self.blocks})

    def median(self, side: str) -> float | None:
        times = [t for b in self.blocks if b.side == side for t in b.times]
        return statistics.median(times) if times else None

    @property
    def looks(self) -> int:
        return len(self.look_alphas)

    @property
    def pairs(self) -> int:
        return min(sum(b.side == side for b in self.blocks) for side in SIDES)

    @property
    def epochs(self) -> int:
        return len({b.epoch for b in self.blocks})

    def pair_log_ratios(self) -> list[list[list[float]]]:
        """Per round, per epoch, each pair's log(head block median) - log(base block median)."""
        by_pair: dict[int, dict[str, Block]] = {}
        for b in self.blocks:
            by_pair.setdefault(b.pair, {})[b.side] = b
        rounds: dict[int, dict[int, list[float]]] = {}
        for pair in by_pair.values():
            if len(pair) == 2:
                ratio = math.log(pair["head"].median) - math.log(pair["base"].median)
                head = pair["head"]
                rounds.setdefault(head.round, {}).setdefault(head.epoch, []).append(ratio)
        return [list(epochs.values()) for epochs in rounds.values()]

    @property
    def verdict(self) -> str:
        if self.failure:
            return NOT_COMPARED
        return self.estimate.verdict if self.estimate else INCONCLUSIVE

    def to_dict(self) -> dict:
        return {
            "case": self.spec.label,
            "spec": self.spec.to_dict(),
            "verdict": self.verdict,
            "estimate": self.estimate.to_dict() if self.estimate else None,
            "failure": self.failure,
            "base_median_s": self.median("base"),
            "head_median_s": self.median("head"),
            "pairs": self.pairs,
            "epochs": self.epochs,
            "rounds": self.rounds,
            "epochs_per_round": self.epochs_per_round,
            "looks": self.looks,
            "look_alphas": self.look_alphas,
            "planned_looks": self.planned_looks,
            "steps_per_call": self.steps_per_call,
            "calls_per_block": self.calls_per_block,
            "elapsed_s": self.elapsed_s,
            "prepared": self.prepared,
            "skipped_updates": self.skipped_updates,
            "outlook": self.outlook,
            "epoch_log": self.epoch_log,
            "round_costs_s": self.round_costs_s,
            "blocks": [b.to_dict() for b in self.blocks],
        }


@dataclass
class Comparison:
    settings: CompareSettings
    sides: dict[str, dict] = field(default_factory=dict)  # what each side ran, and where
    cases: list[CaseComparison] = field(default_factory=list)
    interrupted: bool = False
    workers: dict = field(default_factory=dict)  # how the workers started (settings.workers)

    @property
    def deciding_case(self) -> CaseComparison | None:
        """The case with the most severe verdict (ties: the largest ratio)."""
        if not self.cases:
            return None
        return min(self.cases, key=lambda c: severity(c.verdict, c.estimate and c.estimate.ratio))

    @property
    def verdict(self) -> str:
        verdict = overall_verdict([c.verdict for c in self.cases])
        if self.interrupted and verdict != REGRESSION:
            return INCONCLUSIVE  # cases never run cannot count as no regression
        return verdict

    def exit_code(self, fail_on_inconclusive: bool = False) -> int:
        return exit_code(self.verdict, fail_on_inconclusive)

    def to_dict(self) -> dict:
        case = self.deciding_case
        estimate = case.estimate if case else None
        return {
            "verdict": self.verdict,
            "ratio": estimate.ratio if estimate else None,
            "ci95": list(estimate.ci95) if estimate else None,
            "p": estimate.p if estimate else None,
            "deciding_case": case.spec.label if case else None,
            "interrupted": self.interrupted,
            "settings": self.settings.to_dict(),
            "statistic": STATISTIC,
            "workers": self.workers,
            "sides": self.sides,
            "cases": [c.to_dict() for c in self.cases],
        }
