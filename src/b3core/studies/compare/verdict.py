"""The statistics behind `b3 compare`'s verdicts. No torch: saved results are judged here too.

Interleaved runs come in pairs of blocks, one block of each side in a balanced random order.
Each block is summarised by its median step time; each pair gives the log ratio
log(head median) - log(base median), so drift that is slow against a pair cancels inside it.
Pairs are grouped in epochs, each run by a fresh pair of worker processes, whose Hodges-Lehmann
estimate of its pairs' log ratios is robust to the one block that a burst of outside load hits.
Epochs are grouped in rounds: the epochs whose workers one pair of servers forked. Forked
workers share what their server fixed when it started (where its libraries were loaded), which
moved a 2 ms step by about 1% for a server's whole life on this VM, so a round, not an epoch,
is the independent observation: the mean of its epochs' estimates. (With a fresh interpreter
per epoch, each round is one epoch.) The ratio HEAD/BASE is exp(mean over rounds), with
Student's t interval and two-sided test on the rounds (scipy's one-sample t-test).

Each claim is one-sided: "regression" needs the interval's lower end above 1, "no regression"
its upper end below 1 + threshold, so an interval whose two ends each err with probability a
(two-sided level 1 - 2a) decides at level a. The loop looks at the data more than once, and each
look is another chance of a false verdict. It plans at most MAX_LOOKS looks and spends alpha
across them (`LookPlan`): by the time a fraction f of the planned rounds is in, at most
alpha * f**SPENDING_POWER, and the last look whatever is left. A run of k cases gives each case
alpha / k. The shares add up to at most alpha (a union, or Bonferroni, bound), so the whole run
keeps its chance of a false verdict at most alpha, however many looks it makes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from b3core.studies.compare.settings import (  # noqa: F401 - the verdicts, judged here
    EXIT_CODES,
    FASTER,
    INCONCLUSIVE,
    NO_REGRESSION,
    NOT_COMPARED,
    REGRESSION,
    exit_code,
)

# The most severe case decides a comparison of several cases
SEVERITY = (REGRESSION, NOT_COMPARED, INCONCLUSIVE, NO_REGRESSION, FASTER)
MAX_LOOKS = 4
# Early looks spend little (alpha * f**2, near O'Brien and Fleming's boundaries): they stop only
# on clear cases, and most of alpha is left for the last look, where a slowdown near the
# threshold is decided.
SPENDING_POWER = 2
POWER = 0.8  # for the smallest detectable slowdown printed with an inconclusive verdict


def plan_looks(first: int, last: int, looks: int = MAX_LOOKS) -> list[int]:
    """Round counts at which to look: at most `looks` of them, geometric from first to last."""
    if last <= first or looks < 2:
        return [first]
    growth = (last / first) ** (1 / (looks - 1))
    return sorted({min(last, round(first * growth**j)) for j in range(looks)})


@dataclass
class LookPlan:
    """When to look at one case's rounds, and what each look may spend of the case's alpha.
    Interim looks come at the planned round counts but the last; the last look comes when the
    time is up, however many rounds are in by then, and spends what the others left."""

    rounds: list[int]  # planned round counts of the looks, the last planned when time is up
    alpha: float  # this case's share of the run's alpha
    affordable: int = 0  # the rounds the budget holds (fewer than the first look's, sometimes)

    spent: float = 0.0

    @classmethod
    def for_case(cls, first: int, affordable: int, alpha: float, cases: int = 1) -> LookPlan:
        return cls(plan_looks(first, max(first, affordable)), alpha / max(1, cases), affordable)

    def interim_due(self, rounds: int) -> bool:
        return rounds in self.rounds[:-1]

    def spend(self, rounds: int, last: bool) -> float:
        """The level at which this look decides (each end of its interval errs this often)."""
        fraction = 1.0 if last else min(1.0, rounds / self.rounds[-1])
        target = self.alpha * fraction**SPENDING_POWER
        share, self.spent = target - self.spent, max(self.spent, target)
        return share


@dataclass(frozen=True)
class Estimate:
    """A HEAD/BASE step-time ratio with its intervals and test, and the verdict they give."""

    ratio: float
    ci95: tuple[float, float]
    decision_ci: tuple[float, float]  # each end errs with probability decision_alpha
    decision_alpha: float
    p: float  # two-sided, H0: ratio = 1
    n: int  # rounds (interleaved) or timed samples per side (saved runs)
    verdict: str
    detectable: float | None  # smallest slowdown (a fraction) detectable at this noise
    # interleaved runs: the SD of the rounds' log ratios (what decided), of the epochs' about
    # their round's (each epoch a fresh pair of processes), and of the pairs' about their
    # epoch's (within one pair of processes)
    round_sd: float | None = None
    between_sd: float | None = None
    within_sd: float | None = None

    @property
    def decision_level(self) -> float:
        """The decision interval's two-sided level: each end errs decision_alpha."""
        return 1 - 2 * self.decision_alpha

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "ratio": self.ratio,
            "ci95": list(self.ci95),
            "p": self.p,
            "decision_ci": list(self.decision_ci),
            "decision_alpha": self.decision_alpha,
            "decision_level": self.decision_level,
            "n": self.n,
            "detectable_slowdown": self.detectable,
            "round_sd": self.round_sd,
            "between_process_sd": self.between_sd,
            "within_process_sd": self.within_sd,
        }


def decide(ratio: float, interval: tuple[float, float], threshold: float) -> str:
    """regression: above 1 + threshold and the interval above 1; faster: below 1 - threshold
    and the interval below 1; no regression: the interval's upper end below 1 + threshold;
    otherwise inconclusive."""
    low, high = interval
    if ratio > 1 + threshold and low > 1:
        return REGRESSION
    if ratio < 1 - threshold and high < 1:
        return FASTER
    if high < 1 + threshold:
        return NO_REGRESSION
    return INCONCLUSIVE


def detectable_slowdown(se: float, df: float, alpha: float, threshold: float) -> float:
    """The slowdown that would be flagged with probability POWER at this noise: its interval
    must clear 1 at level alpha, and its estimate must clear 1 + threshold."""
    t_power = sps.t.ppf(POWER, df)
    clears_one = (sps.t.ppf(1 - alpha, df) + t_power) * se
    clears_threshold = math.log1p(threshold) + t_power * se
    return math.expm1(max(clears_one, clears_threshold))


def _estimate(
    log_ratio: float, test, alpha: float, threshold: float, n: int, se: float, df, **spreads
) -> Estimate:
    ci95 = test.confidence_interval(0.95)
    decision = test.confidence_interval(1 - 2 * alpha)
    ratio = math.exp(log_ratio)
    decision_ci = (math.exp(decision.low), math.exp(decision.high))
    verdict = decide(ratio, decision_ci, threshold)
    detectable = detectable_slowdown(se, df, alpha, threshold) if verdict == INCONCLUSIVE else None
    return Estimate(
        ratio,
        (math.exp(ci95.low), math.exp(ci95.high)),
        decision_ci,
        alpha,
        float(test.pvalue),
        n,
        verdict,
        detectable,
        **spreads,
    )


def _jitter_if_constant(values: np.ndarray) -> np.ndarray:
    # identical values (a fake clock): scipy's t has no spread to work with; the interval is
    # then the point, as it should be
    if np.ptp(values) == 0:
        return values + np.linspace(-1e-12, 1e-12, len(values))
    return values


def hodges_lehmann(values: Sequence[float]) -> float:
    """The median of all pairwise (Walsh) averages: the centre of a symmetric distribution, 95%
    as efficient as the mean on normal noise, but hardly moved by the one block of an epoch that
    a burst of outside load hit (on this VM such a block runs 60% slow and would move a mean of
    six pairs by 8%). HEAD against HEAD, the sides are exchangeable and the pairs symmetric
    about 0, so the epochs' estimates stay centred on the truth."""
    x = np.asarray(values, float)
    i, j = np.triu_indices(len(x))
    return float(np.median((x[i] + x[j]) / 2))


def clustered_estimate(
    rounds: Sequence[Sequence[Sequence[float]]], *, alpha: float, threshold: float
) -> Estimate:
    """The ratio from interleaved pairs grouped by epoch, and epochs by round:
    rounds[r][e] holds the log(head/base) of the pairs of round r's epoch e. Each epoch (a fresh
    pair of worker processes) gives its pairs' Hodges-Lehmann estimate; each round (a fresh
    pair of servers, whose workers share what a process keeps from its start) the mean of its
    epochs', and the rounds are the observations of Student's t. With a fresh interpreter per
    epoch, each round is one epoch. Decided at level alpha (the look's share)."""
    epochs = [[np.asarray(epoch, float) for epoch in round_ if len(epoch)] for round_ in rounds]
    epochs = [round_ for round_ in epochs if round_]
    estimates = [np.array([hodges_lehmann(e) for e in round_]) for round_ in epochs]
    means = np.array([round_.mean() for round_ in estimates])
    if len(means) < 2:
        raise ValueError("an estimate needs at least two rounds")
    test = sps.ttest_1samp(_jitter_if_constant(means), 0.0)
    unit_sd = float(means.std(ddof=1))
    se = unit_sd / math.sqrt(len(means))
    flat = [e for round_ in estimates for e in round_]
    epoch_sd = pooled_sd(estimates) if max(map(len, estimates)) > 1 else unit_sd
    return _estimate(
        float(means.mean()),
        test,
        alpha,
        threshold,
        len(means),
        se,
        len(means) - 1,
        round_sd=unit_sd,
        between_sd=epoch_sd if len(flat) > 1 else None,
        within_sd=pooled_sd([e for round_ in epochs for e in round_]),
    )


def pooled_sd(groups: Sequence[np.ndarray]) -> float | None:
    """The pooled SD of values about their own group's mean."""
    squares = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    df = sum(len(g) - 1 for g in groups)
    return math.sqrt(squares / df) if df > 0 else None


def projected_detectable(unit_sd: float, units: int, alpha: float) -> float:
    """The slowdown that `units` rounds of this spread would flag with probability POWER: its
    interval clears 1 at level alpha."""
    se = unit_sd / math.sqrt(units)
    df = max(1, units - 1)
    return math.expm1((sps.t.ppf(1 - alpha, df) + sps.t.ppf(POWER, df)) * se)


def units_needed(unit_sd: float, threshold: float, alpha: float) -> int:
    """Rounds whose projected detectable slowdown is at most the threshold."""
    n = 2
    while projected_detectable(unit_sd, n, alpha) > threshold and n < 100_000:
        n = math.ceil(n * 1.25)
    return n


def unpaired_estimate(
    base_times: Sequence[float],
    head_times: Sequence[float],
    *,
    alpha: float,
    threshold: float,
) -> Estimate:
    """The ratio of two separate runs' step times: Welch's t on log times. Drift between the
    runs, and the difference between their two processes, are not in this interval, which is
    why interleaved runs are the stronger evidence."""
    a, b = np.log(np.asarray(base_times, float)), np.log(np.asarray(head_times, float))
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each side needs at least two times")
    test = sps.ttest_ind(_jitter_if_constant(b), _jitter_if_constant(a), equal_var=False)
    se = float(math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
    n = min(len(a), len(b))
    return _estimate(float(b.mean() - a.mean()), test, alpha, threshold, n, se, test.df)


def overall_verdict(verdicts: Sequence[str]) -> str:
    """The most severe verdict; faster only when every case is faster."""
    if not verdicts:
        return INCONCLUSIVE
    worst = min(verdicts, key=SEVERITY.index)
    if worst == FASTER and any(v != FASTER for v in verdicts):
        return NO_REGRESSION
    return worst


def severity(verdict: str, ratio: float | None) -> tuple[int, float]:
    """A sort key: the most severe verdict first, and within a verdict the largest ratio."""
    return SEVERITY.index(verdict), -(ratio or 0.0)
