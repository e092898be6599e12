"""`b3 compare`'s statistics and loop, on synthetic numbers and fake workers: no processes, no
clock. What the verdicts mean, that epochs (not blocks) are the unit, that the looks keep the
error rate, and that interleaving cancels drift."""

import itertools
import math
import random

import numpy as np
import pytest

from b3core.spec.step import StepSpec
from b3core.studies.compare import interleave
from b3core.studies.compare.interleave import (
    MIN_EPOCH_PAIRS,
    CaseComparison,
    pair_orders,
    run_case,
)
from b3core.studies.compare.records import SIDES
from b3core.studies.compare.settings import CompareSettings
from b3core.studies.compare.verdict import (
    FASTER,
    INCONCLUSIVE,
    MAX_LOOKS,
    NO_REGRESSION,
    NOT_COMPARED,
    REGRESSION,
    LookPlan,
    clustered_estimate,
    decide,
    exit_code,
    overall_verdict,
    plan_looks,
    unpaired_estimate,
)

pytestmark = pytest.mark.untimed  # fake timings only


@pytest.mark.parametrize(
    ("ratio", "interval", "verdict"),
    [
        (1.05, (1.03, 1.07), REGRESSION),
        (1.05, (0.99, 1.11), INCONCLUSIVE),  # big, but not significant
        (1.01, (1.005, 1.015), NO_REGRESSION),  # significant, but below the threshold
        (0.95, (0.93, 0.97), FASTER),
        (1.0, (0.99, 1.01), NO_REGRESSION),
        (1.0, (0.95, 1.05), INCONCLUSIVE),  # the upper bound reaches past 1.02
    ],
)
def test_decide(ratio, interval, verdict):
    assert decide(ratio, interval, threshold=0.02) == verdict


def test_the_looks_spend_at_most_alpha():
    looks = plan_looks(5, 40)
    assert len(looks) <= MAX_LOOKS and looks[0] == 5 and looks[-1] == 40
    assert looks == sorted(set(looks))
    assert plan_looks(5, 3) == [5]
    # a case of three spends its third of alpha: little early, most at the last look
    plan = LookPlan.for_case(5, 40, alpha=0.05, cases=3)
    shares = [plan.spend(n, last=False) for n in plan.rounds[:-1]] + [plan.spend(37, last=True)]
    assert sum(shares) == pytest.approx(0.05 / 3)
    assert shares[0] == pytest.approx(0.05 / 3 * (5 / 40) ** 2)
    assert shares == sorted(shares) and shares[-1] > 0.05 / 3 / 2
    # time runs out after the first interim look: the last look spends all that is left
    early = LookPlan.for_case(5, 40, alpha=0.05)
    assert early.spend(5, last=False) + early.spend(8, last=True) == pytest.approx(0.05)


def each_epoch_a_round(epochs):
    """Epochs of fresh interpreters: each is a round of its own."""
    return [[epoch] for epoch in epochs]


def test_epochs_not_blocks_are_the_unit():
    """Pairs agree perfectly inside each epoch, but epochs differ by a few percent (two processes
    of the same code): the interval must be as wide as the epochs' spread says, or a process's
    luck becomes a verdict."""
    effects = [0.04, -0.03, 0.02, -0.04, 0.01]
    epochs = [[e] * 50 for e in effects]
    estimate = clustered_estimate(each_epoch_a_round(epochs), alpha=0.05, threshold=0.02)
    assert estimate.n == len(effects)
    sd = np.std(effects, ddof=1)
    assert math.log(estimate.ci95[1]) - math.log(estimate.ratio) > 2 * sd / math.sqrt(5)
    assert estimate.verdict == INCONCLUSIVE


def test_one_block_hit_by_a_burst_does_not_move_its_epoch():
    """HEAD against HEAD, pairs within 1% of each other; in every other epoch one block ran 60%
    slow (a burst of outside load, as seen on this VM). Each epoch's Hodges-Lehmann estimate
    keeps it near 1; a mean of its pairs would be moved 8% by the one block, and the spread of
    such epochs would leave the verdict open."""
    rng = np.random.default_rng(1)
    epochs = [list(rng.normal(0, 0.01, 6)) for _ in range(12)]
    for k, epoch in enumerate(epochs[::2]):
        epoch[k % 6] += math.log(1.6) * (-1) ** k
    estimate = clustered_estimate(each_epoch_a_round(epochs), alpha=0.0125, threshold=0.02)
    assert estimate.ratio == pytest.approx(1.0, abs=0.005)
    assert estimate.verdict == NO_REGRESSION


def test_a_clear_slowdown_is_a_regression_and_none_is_no_regression():
    rng = np.random.default_rng(0)
    slowed = [list(math.log(1.10) + rng.normal(0, 0.01, 10)) for _ in range(8)]
    same = [list(rng.normal(0, 0.01, 10)) for _ in range(8)]
    slowed, same = each_epoch_a_round(slowed), each_epoch_a_round(same)
    assert clustered_estimate(slowed, alpha=0.0125, threshold=0.02).verdict == REGRESSION
    unchanged = clustered_estimate(same, alpha=0.0125, threshold=0.02)
    assert unchanged.verdict == NO_REGRESSION and unchanged.detectable is None
    inconclusive = clustered_estimate(
        each_epoch_a_round([list(rng.normal(0, 0.2, 3)) for _ in range(3)]),
        alpha=0.0125,
        threshold=0.02,
    )
    assert inconclusive.verdict == INCONCLUSIVE and inconclusive.detectable > 0.02


def test_the_decision_interval_errs_alpha_at_each_end():
    """A one-sided claim at level a reads the two-sided interval of level 1 - 2a."""
    rng = np.random.default_rng(2)
    epochs = [list(rng.normal(0.01, 0.02, 5)) for _ in range(12)]
    estimate = clustered_estimate(each_epoch_a_round(epochs), alpha=0.025, threshold=0.02)
    assert estimate.decision_alpha == 0.025
    assert estimate.decision_ci == pytest.approx(estimate.ci95)


def test_unpaired_estimate_of_separate_runs():
    rng = np.random.default_rng(1)
    base = np.exp(rng.normal(math.log(0.010), 0.02, 40))
    head = np.exp(rng.normal(math.log(0.012), 0.02, 40))
    estimate = unpaired_estimate(base, head, alpha=0.05, threshold=0.02)
    assert estimate.verdict == REGRESSION and 1.15 < estimate.ratio < 1.25
    assert unpaired_estimate(base, base, alpha=0.05, threshold=0.02).verdict == NO_REGRESSION


@pytest.mark.parametrize(
    ("verdicts", "overall", "code"),
    [
        ([NO_REGRESSION, REGRESSION, INCONCLUSIVE], REGRESSION, 1),
        ([NO_REGRESSION, NOT_COMPARED], NOT_COMPARED, 2),
        ([NO_REGRESSION, INCONCLUSIVE], INCONCLUSIVE, 3),
        ([FASTER, NO_REGRESSION], NO_REGRESSION, 0),
        ([FASTER, FASTER], FASTER, 0),
    ],
)
def test_the_most_severe_case_decides(verdicts, overall, code):
    assert overall_verdict(verdicts) == overall
    assert exit_code(overall) == code
    assert exit_code(INCONCLUSIVE, fail_on_inconclusive=True) == 1


def test_pair_orders_are_balanced():
    orders = list(itertools.islice(pair_orders(random.Random(3)), 200))
    base_first = sum(order[0] == "base" for order in orders)
    assert base_first == 100
    for i in range(0, 200, 2):  # each two pairs: one of each
        assert {orders[i][0], orders[i + 1][0]} == {"base", "head"}
    assert len({tuple(o) for o in orders[:20:2]}) == 2  # and which comes first is random


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


class FakeWorker:
    """A side whose step takes `speed(now) * factor * process_effect` seconds: the machine's
    drift hits every side alike, the process effect is this worker's own."""

    def __init__(self, clock, factor, speed, process_effect, log, second_discount=1.0):
        self.clock, self.factor, self.speed, self.effect, self.log = (
            clock,
            factor,
            speed,
            process_effect,
            log,
        )
        self.second_discount = second_discount  # the second block of a pair runs faster

    def ask(self, op, **kw):
        if op == "hello":
            return {"b3core_file": None}
        if op == "prepare":
            self.clock.now += 1.0
            return {"step_s": 0.01, "warmup": {}, "device": "cpu"}
        step = self.speed(self.clock.now) * self.factor * self.effect
        if len(self.log) % 2:  # pairs are two consecutive blocks: this one comes second
            step *= self.second_discount
        self.log.append(self)
        self.clock.now += step * kw["calls"] * kw["steps"]
        return {"times": [step] * kw["calls"], "skipped_updates": 0}

    def retire(self):
        pass


class FakePool:
    """Fresh fake workers for every epoch, on the fake clock. With `forks`, each round's
    servers take `server_s` to start and give their workers a shared effect of SD server_sd."""

    def __init__(self, make, clock, rng, forks=False, server_s=0.0, server_sd=0.0):
        self.make, self.clock, self.rng = make, clock, rng
        self.forks, self.server_start_s, self.server_sd = forks, server_s, server_sd
        self.server_effect, self.started = {}, []

    def start_epoch(self, new_round=False):
        if new_round and self.forks:
            self.clock.now += self.server_start_s
            self.server_effect = {s: math.exp(self.rng.gauss(0, self.server_sd)) for s in SIDES}
        self.clock.now += 0.0 if self.forks else 5.0  # fresh interpreters start
        workers = self.make(self.server_effect)
        self.started.append(workers)
        return workers


def fake_case(
    monkeypatch,
    head_factor,
    *,
    drift,
    process_sd=0.0,
    settings=None,
    second=1.0,
    cases=1,
    **pool,
):
    clock = FakeClock()
    monkeypatch.setattr(interleave.time, "monotonic", clock.monotonic)
    rng = random.Random(0)
    asked = []

    def speed(now):  # the machine slows by `drift` per 100 s
        return 0.01 * (1 + drift * now / 100)

    def make(server_effect):
        return {
            side: FakeWorker(
                clock,
                f * server_effect.get(side, 1.0),
                speed,
                math.exp(rng.gauss(0, process_sd)),
                asked,
                second,
            )
            for side, f in (("base", 1.0), ("head", head_factor))
        }

    fake_pool = FakePool(make, clock, rng, **pool)
    out = CaseComparison(StepSpec(model="simple_cnn", batch_size=8, device="cpu"))
    run_case(fake_pool, out, settings or CompareSettings(max_time_s=150), cases=cases)
    return out, fake_pool.started, asked


def test_interleaving_cancels_drift(monkeypatch):
    """The machine slows by 50% over the run: interleaved pairs still give the true ratio."""
    out, _, _ = fake_case(monkeypatch, 1.03, drift=0.5)
    assert out.verdict == REGRESSION
    assert out.estimate.ratio == pytest.approx(1.03, rel=2e-3)
    same, _, _ = fake_case(monkeypatch, 1.0, drift=0.5)
    assert same.verdict == NO_REGRESSION


def test_the_balanced_order_cancels_going_second(monkeypatch):
    """The second block of every pair runs 5% faster (warm caches): both sides go second
    equally often, so the ratio stays 1."""
    out, _, asked = fake_case(monkeypatch, 1.0, drift=0.0, second=0.95)
    assert out.estimate.ratio == pytest.approx(1.0, abs=2e-3)
    assert out.verdict == NO_REGRESSION
    assert len(asked) > len(out.blocks)  # the untimed settling blocks ran first


def test_every_epoch_runs_fresh_workers_and_the_looks_stop_it(monkeypatch):
    settings = CompareSettings(max_time_s=150, min_rounds=4)
    out, started, _ = fake_case(
        monkeypatch, 1.0, drift=0.0, process_sd=0.05, settings=settings, cases=3
    )
    assert len(started) == out.epochs >= 4
    assert len({id(w) for workers in started for w in workers.values()}) == 2 * len(started)
    assert {b.epoch for b in out.blocks} == set(range(out.epochs))
    assert 1 <= out.looks <= out.planned_looks <= MAX_LOOKS
    # the looks at each of the run's 3 cases spend that case's third of alpha, and no more
    assert sum(out.look_alphas) == pytest.approx(0.05 / 3)
    assert out.estimate.decision_alpha == out.look_alphas[-1]
    # processes that differ by 5% give no verdict from one epoch's many agreeing pairs
    assert out.verdict == INCONCLUSIVE
    # the last look came when another epoch would not fit, and no epoch was cut short
    assert out.elapsed_s <= settings.max_time_s < out.elapsed_s * (1 + 1 / out.epochs)
    epochs = [epoch for round_ in out.pair_log_ratios() for epoch in round_]
    assert all(len(pairs) >= MIN_EPOCH_PAIRS for pairs in epochs)


def test_a_decided_case_stops_early(monkeypatch):
    out, _, _ = fake_case(monkeypatch, 1.5, drift=0.0)
    assert out.verdict == REGRESSION
    assert out.epochs == CompareSettings().min_rounds and out.looks == 1
    assert out.elapsed_s < CompareSettings().max_time_s


def test_a_time_limit_inside_an_epoch_still_gives_whole_epochs(monkeypatch):
    """The time runs out while the first epoch settles: it still runs its minimum of pairs, and
    so does the second, which a verdict needs."""
    out, _, _ = fake_case(monkeypatch, 1.5, drift=0.0, settings=CompareSettings(max_time_s=8))
    assert out.epochs == 2 and out.looks == 1
    assert [len(e) for r in out.pair_log_ratios() for e in r] == [MIN_EPOCH_PAIRS] * 2


class FakeServer:
    """A side's server whose workers run on the fake clock; the process started first in each
    epoch is 5% faster (it got the better placement, say), whichever side it belongs to."""

    FIRST_ADVANTAGE = 0.95

    def __init__(self, side, clock, started, log):
        self.side, self.clock, self.started, self.log = side, clock, started, log

    def start_preload(self, model):
        pass

    def preloaded(self):
        pass

    def fork(self, seed, shift_layout=True):
        first = not self.started or self.started[-1]["epoch_full"]
        if first:
            self.started.append({"epoch_full": False})
        else:
            self.started[-1]["epoch_full"] = True
        effect = self.FIRST_ADVANTAGE if first else 1.0
        worker = FakeWorker(self.clock, 1.0, lambda now: 0.01, effect, self.log)
        worker.side, worker.close = self.side, lambda grace=0: None
        return worker

    def close(self, grace=0):
        pass


def test_head_against_head_centres_on_1_whichever_process_starts_first(monkeypatch, tmp_path):
    """Identical sides, but the fake clock favours the worker that started first in each
    epoch: the starts are balanced, so the ratio stays 1 (a fixed order would read 0.95 or
    1.05)."""
    from b3core.studies.compare import session
    from b3core.studies.compare.sides import SideSpec

    clock, started, log = FakeClock(), [], []
    monkeypatch.setattr(interleave.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(session, "Zygote", lambda side, env: FakeServer(side, clock, started, log))
    monkeypatch.chdir(tmp_path)
    sides = [SideSpec(name, "WORKTREE", "python") for name in ("base", "head")]
    spec = StepSpec(model="simple_cnn", batch_size=8, device="cpu")
    result = session.compare(sides, [spec], CompareSettings(max_time_s=150, min_rounds=8))
    case = result.cases[0]
    assert case.epochs >= 8 and len(started) == case.epochs
    assert case.estimate.ratio == pytest.approx(1.0, abs=0.1 / case.epochs)
    firsts = [entry["started"][0] for entry in case.epoch_log]
    assert abs(firsts.count("base") - firsts.count("head")) <= 1


def test_the_table_shows_the_interval_that_decided():
    """A look that spends a small share of alpha decides on an interval wider than 95%: the
    table's verdict column reads that interval, with its level; the plain 95% CI is labelled
    apart."""
    from b3core.reports.compare_report import DECISION_COLUMN, comparison_table
    from b3core.studies.compare.records import Comparison

    rng = np.random.default_rng(4)
    estimate = clustered_estimate(
        each_epoch_a_round([list(rng.normal(0.03, 0.02, 4)) for _ in range(6)]),
        alpha=0.002,
        threshold=0.02,
    )
    assert estimate.decision_ci[0] < estimate.ci95[0] - 0.005
    case = CaseComparison(StepSpec(model="simple_cnn", batch_size=8, device="cpu"))
    case.estimate = estimate
    lines = comparison_table(Comparison(CompareSettings(), cases=[case])).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    row = dict(zip(header, (cell.strip() for cell in lines[2].strip("|").split("|"))))
    assert "decision" in DECISION_COLUMN and DECISION_COLUMN in header
    low, high = estimate.decision_ci
    assert row[DECISION_COLUMN] == f"{estimate.ratio:.3f} ({low:.3f} to {high:.3f}, 99.6%)"
    assert row["plain 95% CI"] == f"{estimate.ci95[0]:.3f} to {estimate.ci95[1]:.3f}"


def test_rounds_of_forked_epochs_are_the_unit(monkeypatch):
    """Forked workers share their server's luck: HEAD against HEAD with servers that differ by
    3% and epochs that agree to 0.1%. Rounds of several epochs each are the observations, so
    the interval is as wide as the servers' spread (epochs as units would call it a
    regression or faster)."""
    settings = CompareSettings(max_time_s=150)
    out, started, _ = fake_case(
        monkeypatch,
        1.0,
        drift=0.0,
        process_sd=0.001,
        settings=settings,
        forks=True,
        server_s=4.0,
        server_sd=0.03,
    )
    assert out.epochs_per_round > 1 and out.epochs == out.rounds * out.epochs_per_round
    assert {b.round for b in out.blocks} == set(range(out.rounds))
    assert out.estimate.n == out.rounds and out.verdict == INCONCLUSIVE
    assert out.estimate.round_sd > 10 * out.estimate.between_sd


def test_a_short_time_limit_gets_rounds_that_fit_it():
    """Servers that take 4 s and epochs of 2 s: a round of 6 epochs puts a quarter of it into
    the servers' start; a shorter --max-time gets fewer epochs per round, so that the rounds
    before the first look fit it, down to one epoch."""
    from types import SimpleNamespace

    pool = SimpleNamespace(forks=True, server_start_s=4.0)

    def epochs(max_time_s: float, min_rounds: int = 2) -> int:
        settings = CompareSettings(max_time_s=max_time_s, min_rounds=min_rounds)
        return interleave.epochs_per_round(pool, 2.0, settings)

    assert epochs(160, 5) == 6
    assert epochs(20) == 3  # rounds of 10 s: 4 s of servers and 3 epochs
    assert epochs(10) == 1 and epochs(18, 3) == 1
    assert (
        interleave.epochs_per_round(
            SimpleNamespace(forks=False, server_start_s=0.0), 2.0, CompareSettings()
        )
        == 1
    )
