"""The interleaved comparison of one case, epoch by epoch.

An epoch starts a fresh worker for each side, warms both, runs untimed pairs of blocks for
SETTLING_SECONDS, then pairs of timed blocks for `epoch_s` seconds, each pair in a balanced
random order (each two pairs run once base-first and once head-first, which first is drawn at
random). After planned numbers of epochs the loop looks at the data (`verdict`), and stops when
a look decides or the time is up.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable

from b3core.measuring.clocks import block_steps_for
from b3core.studies.compare.records import SIDES, Block, CaseComparison
from b3core.studies.compare.settings import CompareSettings
from b3core.studies.compare.verdict import (
    INCONCLUSIVE,
    LookPlan,
    clustered_estimate,
)
from b3core.studies.compare.workers import CaseFailed, WorkerProcess

# A block is several timed calls, summarised by their median: long enough that one hiccup does
# not move it, short enough that many pairs fit in an epoch and drift within a pair is small.
BLOCK_SECONDS = 0.5
MIN_CALLS_PER_BLOCK = 5
MAX_CALLS_PER_BLOCK = 200
# Untimed pairs after the warm-up, for at least this long: a fresh process's first blocks run
# up to 3x slow on a CPU (page faults, allocator growth, thread pools), far past 2 warm-up steps
SETTLING_SECONDS = 1.5
MIN_EPOCH_PAIRS = 4  # and even: each order runs equally often


def pair_orders(rng: random.Random):
    """Side orders for successive pairs: each two pairs hold one base-first and one head-first
    pair, in a random order, so that neither side is favoured by going first or second."""
    while True:
        two = [SIDES, SIDES[::-1]]
        rng.shuffle(two)
        yield from two


def block_shape(step_s: float, clock: str) -> tuple[int, int]:
    """(steps per timed call, calls per block) for a step of step_s seconds."""
    steps = 1 if clock == "per-step" else block_steps_for(step_s)
    per_call = max(step_s * steps, 1e-9)
    calls = math.ceil(BLOCK_SECONDS / per_call)
    return steps, max(MIN_CALLS_PER_BLOCK, min(MAX_CALLS_PER_BLOCK, calls))


def _run_epoch(
    workers: dict[str, WorkerProcess],
    out: CaseComparison,
    settings: CompareSettings,
    rng: random.Random,
    began: float,
) -> None:
    """Warm both fresh workers, settle, then time pairs for settings.epoch_s, or until the
    case's time is up, but at least MIN_EPOCH_PAIRS, and an even number of them (each order
    runs equally often)."""
    for side in rng.sample(SIDES, 2):
        reply = workers[side].ask(
            "prepare", spec=out.spec.to_dict(), warmup=settings.warmup, seed=0
        )
        if "model_module" in reply:
            workers[side].side.check_imported(reply["model_module"], reply["model_file"])
        out.prepared.setdefault(side, []).append(reply)
    if not out.calls_per_block:  # one block shape for the whole case
        step_s = min(p[0]["step_s"] for p in out.prepared.values())
        out.steps_per_call, out.calls_per_block = block_shape(step_s, settings.clock)
    block = {"calls": out.calls_per_block, "steps": out.steps_per_call}
    settling, settling_until = pair_orders(rng), time.monotonic() + SETTLING_SECONDS
    while time.monotonic() < settling_until:
        for side in next(settling):
            workers[side].ask("block", **block)
    orders, epoch, epoch_began = pair_orders(rng), out.epochs, time.monotonic()
    for timed in itertools.count(1):
        pair = out.pairs
        for side in next(orders):
            started = time.monotonic() - began
            answer = workers[side].ask("block", **block)
            ranks = answer.get("rank_times")
            ranks = tuple(map(tuple, ranks)) if ranks else None
            out.blocks.append(Block(side, pair, epoch, started, tuple(answer["times"]), ranks))
            out.skipped_updates[side] += answer["skipped_updates"]
        out.elapsed_s = time.monotonic() - began
        epoch_done = time.monotonic() - epoch_began >= settings.epoch_s
        out_of_time = out.elapsed_s >= settings.max_time_s
        if (epoch_done or out_of_time) and timed >= MIN_EPOCH_PAIRS and timed % 2 == 0:
            return


def run_case(
    start_workers: Callable[[], dict[str, WorkerProcess]],
    out: CaseComparison,
    settings: CompareSettings,
    cases: int = 1,
) -> CaseComparison:
    """Epochs until a look decides or the time is up. The looks are planned once the first
    epoch shows what an epoch costs (`LookPlan`). No epoch starts that the time left cannot
    hold, at the mean cost of the epochs so far, and every epoch runs its minimum of pairs, so
    no epoch is cut short (a cut one would count as fully as any other). `out` fills as
    blocks arrive, so an interrupt keeps them. A verdict needs at least two epochs: the time
    limit gives way for them."""
    rng = random.Random(settings.seed)
    began = time.monotonic()
    plan: LookPlan | None = None
    try:
        while True:
            workers = start_workers()
            try:
                _run_epoch(workers, out, settings, rng, began)
            finally:
                for worker in workers.values():
                    worker.retire()  # the next epoch's start waits for them
            if plan is None:
                affordable = math.floor(settings.max_time_s / max(out.elapsed_s, 1e-9))
                plan = LookPlan.for_case(settings.min_epochs, affordable, settings.alpha, cases)
                out.planned_looks = len(plan.epochs)
            next_epoch_s = out.elapsed_s / out.epochs
            last = out.epochs >= 2 and out.elapsed_s + next_epoch_s > settings.max_time_s
            if not (last or plan.interim_due(out.epochs)):
                continue
            out.look_alphas.append(plan.spend(out.epochs, last))
            out.estimate = clustered_estimate(
                out.pair_log_ratios(), alpha=out.look_alphas[-1], threshold=settings.threshold
            )
            if out.estimate.verdict != INCONCLUSIVE or last:
                break
    except CaseFailed as failed:
        out.failure = f"{failed.side.upper()}: {failed.message}"
    out.elapsed_s = time.monotonic() - began
    return out
