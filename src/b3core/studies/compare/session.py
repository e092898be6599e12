"""A whole comparison: the sides checked out, a fresh worker per side for every epoch, every
case interleaved, and the overall verdict with its exit code. Worktrees, servers and workers
are gone when it returns, also after an error or Ctrl-C; an interrupt keeps the cases (and
blocks) measured so far."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from b3core.errors import B3Error
from b3core.spec.step import StepSpec
from b3core.studies.compare.interleave import pair_orders, run_case
from b3core.studies.compare.records import CaseComparison, Comparison
from b3core.studies.compare.settings import EXEC, FORK, CompareSettings
from b3core.studies.compare.sides import (
    Side,
    checked_out,
    repository_root,
    signals_deferred,
)
from b3core.studies.compare.workers import (
    EXIT_GRACE_S,
    CannotFork,
    ExecWorker,
    Worker,
    World,
    Zygote,
    close_all,
)


class SideWorkers:
    """Every side's workers in a comparison: a fresh one per side for each epoch, forked by the
    side's server or started as a fresh interpreter. Each round starts fresh servers (a forked
    worker keeps what its server fixed at its start). Which side starts first is balanced: each
    two epochs (and rounds) start once base first and once head first, in a random order. The
    previous epoch's workers have ended, and their memory is free, before the next ones
    start."""

    def __init__(self, sides: list[Side], result: Comparison, world: World | None):
        self.sides, self.result, self.world = sides, result, world
        self.by_name = {side.name: side for side in sides}
        self.rng = random.Random(result.settings.seed)
        self.orders, self.server_orders = pair_orders(self.rng), pair_orders(self.rng)
        self.live: list[Worker] = []
        self.zygotes: dict[str, Zygote] = {}
        self.server_start_s = 0.0
        self.unused_servers = False  # started for a round that has not begun
        self.start = FORK if result.settings.workers == FORK and world is None else EXEC
        self.env = result.settings.worker_environment()
        result.workers = {"start": self.start, "environment": self.env}

    @property
    def forks(self) -> bool:
        return self.start == FORK

    def _start_servers(self) -> None:
        """Fresh servers for both sides (the last ones and their workers ended first), each
        importing the case's model code; how long that took is `server_start_s`."""
        close_all([*self.live, *self.zygotes.values()])
        self.live.clear()
        self.zygotes.clear()
        began = time.monotonic()
        for name in next(self.server_orders):
            self.zygotes[name] = Zygote(self.by_name[name], self.env)
        for zygote in self.zygotes.values():
            zygote.start_preload(self.model)
        for zygote in self.zygotes.values():
            zygote.preloaded()
        self.server_start_s = time.monotonic() - began
        self.unused_servers = True

    def begin_case(self, spec: StepSpec) -> None:
        """The case's first round of servers, started before its clock's first epoch."""
        self.model = spec.model
        if self.forks:
            self._start_servers()

    def _fresh(self, side: Side) -> Worker:
        if self.forks:
            seed, shift = self.rng.getrandbits(32), self.result.settings.shift_layout
            return self.zygotes[side.name].fork(seed, shift)
        return ExecWorker(side, self.world, self.env)

    def _start(self, order: list[Side]) -> dict[str, Worker]:
        workers: dict[str, Worker] = {}
        for side in order:  # until closed, every worker stays in `live`, whatever happens
            workers[side.name] = self._fresh(side)
            self.live.append(workers[side.name])
        return workers

    def start_epoch(self, new_round: bool = False) -> dict[str, Worker]:
        close_all(self.live)
        self.live.clear()
        order = [self.by_name[name] for name in next(self.orders)]
        try:
            if self.forks and new_round and not self.unused_servers:
                self._start_servers()
            self.unused_servers = False
            workers = self._start(order)
        except CannotFork as refused:  # both sides to fresh interpreters: they start alike
            close_all([*self.live, *self.zygotes.values()])
            self.live.clear()
            self.zygotes.clear()
            self.start = EXEC
            self.result.workers.update(start=EXEC, fell_back=str(refused))
            workers = self._start(order)
        for side in self.sides:
            if side.name not in self.result.sides:  # the first workers speak for all
                hello = workers[side.name].ask("hello")
                side.check_imported("b3core", hello["b3core_file"])
                self.result.sides[side.name] = side_record(side, hello)
        return workers

    def close(self, grace: float) -> None:
        close_all([*self.live, *self.zygotes.values()], grace)


def compare(
    sides_asked,
    cases: list[StepSpec],
    settings: CompareSettings,
    *,
    world: World | None = None,
    on_start: Callable[[CaseComparison], None] | None = None,
    on_outlook: Callable[[CaseComparison], None] | None = None,
) -> Comparison:
    """Every case, interleaved; each side a world of ranks, given one. A side that cannot run
    a case (bad input, a dead worker) marks that case not compared and the run goes on; when no
    case could be compared at all, the first such error is raised, as one line."""
    result = Comparison(settings)
    errors: list[B3Error] = []
    with checked_out(sides_asked, repository_root()) as sides:
        workers = SideWorkers(sides, result, world)
        try:
            for spec in cases:
                case = CaseComparison(spec)
                result.cases.append(case)
                if on_start:
                    on_start(case)
                try:
                    began = time.monotonic()  # the case's time includes its servers' start
                    workers.begin_case(spec)
                    run_case(workers, case, settings, len(cases), began, on_outlook)
                except B3Error as exc:
                    errors.append(exc)
                    case.failure = str(exc)
        except KeyboardInterrupt:
            result.interrupted = True
            if result.cases and result.cases[-1].failure is None:
                result.cases[-1].failure = "interrupted"
        finally:
            with signals_deferred():
                workers.close(grace=0.5 if result.interrupted else EXIT_GRACE_S)
    if errors and len(errors) == len(result.cases):
        raise errors[0]
    return result


def side_record(side: Side, hello: dict) -> dict:
    return {
        "revision": side.spec.revision,
        "sha": side.sha,
        "dirty": side.dirty,
        "python": side.spec.python,
        "code": str(side.code_dir),
        **hello,
    }
