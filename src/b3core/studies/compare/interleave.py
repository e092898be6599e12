"""The interleaved comparison of one case, round by round, epoch by epoch.

An epoch starts a fresh worker for each side, warms both, runs SETTLING_CALLS untimed calls
on each, then pairs of timed blocks for `epoch_s` seconds (at least MIN_EPOCH_PAIRS), each pair
in a balanced random order (each two pairs run once base-first and once head-first, which first
is drawn at random). A round is the epochs whose workers one pair of servers forked (one epoch
of fresh interpreters). After planned numbers of rounds the loop looks at the data (`verdict`),
and stops when a look decides or the time is up.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable
from typing import Protocol

from b3core.measuring.clocks import block_steps_for
from b3core.studies.compare.records import SIDES, Block, CaseComparison
from b3core.studies.compare.settings import CompareSettings
from b3core.studies.compare.verdict import (
    INCONCLUSIVE,
    LookPlan,
    clustered_estimate,
    projected_detectable,
    units_needed,
)
from b3core.studies.compare.workers import CaseFailed, Worker

# A block is several timed calls, summarised by their median: long enough that one hiccup does
# not move it, short enough that many pairs fit in an epoch and drift within a pair is small.
BLOCK_SECONDS = 0.5
MIN_CALLS_PER_BLOCK = 3
MAX_CALLS_PER_BLOCK = 200
# Each epoch is a fresh pair of processes, and the spread between such pairs is most of the
# noise, so an epoch is short: one untimed call per side after the warm-up (a fresh worker's
# first block ran up to 2% slow), then two timed pairs, one in each order
# (docs/results/vm-cpu/process-effect-*.md).
SETTLING_CALLS = 1
MIN_EPOCH_PAIRS = 2  # and even: each order runs equally often
# A round's servers are started once for several epochs: their start (seconds of imports) should
# take about this share of the round
SERVER_SHARE = 0.25
MAX_EPOCHS_PER_ROUND = 8


def pair_orders(rng: random.Random):
    """Side orders for successive pairs (of blocks, or of workers started and warmed): each
    two hold one base-first and one head-first order, in a random order, so that neither side
    is favoured by going first or second."""
    while True:
        two = [SIDES, SIDES[::-1]]
        rng.shuffle(two)
        yield from two


def block_shape(step_s: float, clock: str, min_calls: int = MIN_CALLS_PER_BLOCK) -> tuple[int, int]:
    """(steps per timed call, calls per block) for a step of step_s seconds."""
    steps = 1 if clock == "per-step" else block_steps_for(step_s)
    per_call = max(step_s * steps, 1e-9)
    calls = math.ceil(BLOCK_SECONDS / per_call)
    return steps, max(min_calls, min(MAX_CALLS_PER_BLOCK, calls))


def _run_epoch(
    workers: dict[str, Worker],
    out: CaseComparison,
    settings: CompareSettings,
    rng: random.Random,
    began: float,
    prepare_order: tuple[str, str] = SIDES,
    round_number: int = 0,
) -> None:
    """Warm both fresh workers (in `prepare_order`), settle, then time pairs for
    settings.epoch_s, or until the case's time is up, but at least MIN_EPOCH_PAIRS, and an even
    number of them (each order runs equally often). `workers` come in the order they started."""
    epoch = {"round": round_number, "started": list(workers), "began_s": time.monotonic() - began}
    epoch["prepared"] = list(prepare_order)
    for side in epoch["prepared"]:
        reply = workers[side].ask(
            "prepare",
            spec=out.spec.to_dict(),
            set_fields=out.spec.set_fields(),
            warmup=settings.warmup,
            seed=0,
        )
        if "model_module" in reply:
            workers[side].side.check_imported(reply["model_module"], reply["model_file"])
        out.prepared.setdefault(side, []).append(reply)
    if not out.calls_per_block:  # one block shape for the whole case
        step_s = min(p[0]["step_s"] for p in out.prepared.values())
        out.steps_per_call, out.calls_per_block = block_shape(step_s, settings.clock)
    block = {"calls": out.calls_per_block, "steps": out.steps_per_call}
    for side in next(pair_orders(rng)) if SETTLING_CALLS else ():
        workers[side].ask("block", calls=SETTLING_CALLS, steps=out.steps_per_call)
    orders, number, epoch_began = pair_orders(rng), out.epochs, time.monotonic()
    epoch["timed_from_s"] = epoch_began - began
    for timed in itertools.count(1):
        pair = out.pairs
        for side in next(orders):
            started = time.monotonic() - began
            answer = workers[side].ask("block", **block)
            ranks = answer.get("rank_times")
            ranks = tuple(map(tuple, ranks)) if ranks else None
            times = tuple(answer["times"])
            out.blocks.append(Block(side, pair, number, started, times, ranks, round_number))
            out.skipped_updates[side] += answer["skipped_updates"]
        out.elapsed_s = time.monotonic() - began
        epoch_done = time.monotonic() - epoch_began >= settings.epoch_s
        out_of_time = out.elapsed_s >= settings.max_time_s
        if (epoch_done or out_of_time) and timed >= MIN_EPOCH_PAIRS and timed % 2 == 0:
            epoch["ended_s"] = out.elapsed_s
            out.epoch_log.append(epoch)
            return


class WorkerPool(Protocol):
    """Where each epoch's fresh workers come from (session.SideWorkers)."""

    forks: bool  # workers forked by servers, which serve a round of epochs
    server_start_s: float  # what starting the servers took, last time

    def start_epoch(self, new_round: bool) -> dict[str, Worker]: ...


def epochs_per_round(pool: WorkerPool, epoch_s: float, settings: CompareSettings) -> int:
    """A round's epochs: enough that starting its servers takes about SERVER_SHARE of it, but
    few enough that the rounds before the first look fit the case's time (a short --max-time
    gets short rounds, not a limit overrun several times); one when every epoch is a fresh
    interpreter anyway."""
    if not pool.forks:
        return 1
    epoch_s = max(epoch_s, 1e-9)
    wanted = math.ceil(pool.server_start_s * (1 - SERVER_SHARE) / SERVER_SHARE / epoch_s)
    round_s = settings.max_time_s / settings.min_rounds
    fitting = math.floor((round_s - pool.server_start_s) / epoch_s)
    return max(1, min(MAX_EPOCHS_PER_ROUND, wanted, fitting))


def run_case(
    pool: WorkerPool,
    out: CaseComparison,
    settings: CompareSettings,
    cases: int = 1,
    began: float | None = None,
    on_outlook: Callable[[CaseComparison], None] | None = None,
) -> CaseComparison:
    """Rounds of epochs until a look decides or the time is up (counted from `began`, default
    now). A round's length is set after its first epoch (`epochs_per_round`), and the looks
    are planned once the first round shows what a round costs (`LookPlan`). No round starts
    that the time left cannot hold, and every epoch runs its minimum of pairs, so nothing is
    cut short (a cut epoch would count as fully as any other). `out` fills as blocks arrive, so
    an interrupt keeps them. A verdict needs at least two rounds: the time limit gives way for
    them. At the first look, `out.outlook` says what the noise lets the whole budget decide
    (and `on_outlook` hears it)."""
    rng = random.Random(settings.seed)
    prepare_orders = pair_orders(rng)
    began = time.monotonic() if began is None else began
    plan: LookPlan | None = None
    round_number, in_round, round_began = -1, 0, time.monotonic()
    try:
        while True:
            new_round = in_round == 0
            if new_round:
                round_number, round_began = round_number + 1, time.monotonic()
            epoch_began = time.monotonic()
            workers = pool.start_epoch(new_round)
            try:
                _run_epoch(workers, out, settings, rng, began, next(prepare_orders), round_number)
            finally:
                for worker in workers.values():
                    worker.retire()  # the next epoch's start waits for them
            if out.rounds == 1 and in_round == 0:
                out.epochs_per_round = epochs_per_round(
                    pool, time.monotonic() - epoch_began, settings
                )
            in_round = (in_round + 1) % out.epochs_per_round
            if in_round:
                continue
            out.round_costs_s.append(time.monotonic() - round_began)
            if plan is None and out.rounds >= min(2, settings.min_rounds):
                left = (settings.max_time_s - out.elapsed_s) / max(out.round_cost_s, 1e-9)
                affordable = out.rounds + max(0, math.floor(left))
                plan = LookPlan.for_case(settings.min_rounds, affordable, settings.alpha, cases)
                out.planned_looks = len(plan.rounds)
            last = out.rounds >= 2 and out.elapsed_s + out.round_cost_s > settings.max_time_s
            if plan is None or not (last or plan.interim_due(out.rounds)):
                continue
            out.look_alphas.append(plan.spend(out.rounds, last))
            out.estimate = clustered_estimate(
                out.pair_log_ratios(), alpha=out.look_alphas[-1], threshold=settings.threshold
            )
            if out.outlook is None:
                out.outlook = outlook(out, plan, settings)
                if on_outlook is not None:
                    on_outlook(out)
            if out.estimate.verdict != INCONCLUSIVE or last:
                break
    except CaseFailed as failed:
        out.failure = f"{failed.side.upper()}: {failed.message}"
    out.elapsed_s = time.monotonic() - began
    return out


def outlook(out: CaseComparison, plan: LookPlan, settings: CompareSettings) -> dict:
    """What the noise seen so far lets the whole budget decide: the slowdown that the planned
    rounds would flag (80% power), and, when that is above the threshold, the rounds and time
    that would bring it down to the threshold."""
    unit_sd = out.estimate.round_sd
    planned = max(2, min(plan.rounds[-1], plan.affordable))
    view = {
        "after_rounds": out.rounds,
        "after_epochs": out.epochs,
        "round_sd": unit_sd,
        "between_process_sd": out.estimate.between_sd,
        "within_process_sd": out.estimate.within_sd,
        "planned_rounds": planned,
        "detectable_by_last_look": projected_detectable(unit_sd, planned, plan.alpha),
    }
    if view["detectable_by_last_look"] > settings.threshold:
        needed = units_needed(unit_sd, settings.threshold, plan.alpha)
        startup = max(0.0, out.elapsed_s - sum(out.round_costs_s))
        view["rounds_needed"] = needed
        view["time_needed_s"] = startup + needed * out.round_cost_s
    return view
