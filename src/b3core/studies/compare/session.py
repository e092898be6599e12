"""A whole comparison: the sides checked out, a worker for each, every case interleaved, and
the overall verdict with its exit code. Worktrees and workers are gone when it returns, also
after an error or Ctrl-C; an interrupt keeps the cases (and blocks) measured so far."""

from __future__ import annotations

from collections.abc import Callable

from b3core.errors import B3Error
from b3core.spec.step import StepSpec
from b3core.studies.compare.interleave import run_case
from b3core.studies.compare.records import CaseComparison, Comparison
from b3core.studies.compare.settings import CompareSettings
from b3core.studies.compare.sides import (
    Side,
    SideSpec,
    checked_out,
    repository_root,
    signals_deferred,
)
from b3core.studies.compare.workers import EXIT_GRACE_S, WorkerProcess, World, close_all


def compare(
    side_specs: list[SideSpec],
    cases: list[StepSpec],
    settings: CompareSettings,
    *,
    world: World | None = None,
    on_start: Callable[[CaseComparison], None] | None = None,
) -> Comparison:
    """Every case, interleaved; each side a world of ranks, given one. A side that cannot run
    a case (bad input, a dead worker) marks
    that case not compared and the run goes on; when no case could be compared at all, the
    first such error is raised, as one line."""
    result = Comparison(settings)
    errors: list[B3Error] = []
    with checked_out(side_specs, repository_root()) as sides:
        live: list[WorkerProcess] = []

        def start_workers() -> dict[str, WorkerProcess]:
            """A fresh worker per side, both started before either is asked anything (so they
            import in parallel, while the last epoch's workers tear down); those have ended
            before this returns, so their memory is free."""
            retiring, fresh = list(live), []
            for side in sides:  # until closed, every worker stays in `live`, whatever happens
                fresh.append(WorkerProcess(side, world))
                live.append(fresh[-1])
            close_all(retiring)
            for worker in retiring:
                live.remove(worker)
            workers = dict(zip((side.name for side in sides), fresh))
            for side in sides:
                if side.name not in result.sides:  # the first workers speak for all
                    hello = workers[side.name].ask("hello")
                    side.check_imported("b3core", hello["b3core_file"])
                    result.sides[side.name] = _side_record(side, hello)
            return workers

        try:
            for spec in cases:
                case = CaseComparison(spec)
                result.cases.append(case)
                if on_start:
                    on_start(case)
                try:
                    run_case(start_workers, case, settings, cases=len(cases))
                except B3Error as exc:
                    errors.append(exc)
                    case.failure = str(exc)
        except KeyboardInterrupt:
            result.interrupted = True
            if result.cases and result.cases[-1].failure is None:
                result.cases[-1].failure = "interrupted"
        finally:
            with signals_deferred():
                close_all(live, grace=0.5 if result.interrupted else EXIT_GRACE_S)
    if errors and len(errors) == len(result.cases):
        raise errors[0]
    return result


def _side_record(side: Side, hello: dict) -> dict:
    return {
        "revision": side.spec.revision,
        "sha": side.sha,
        "dirty": side.dirty,
        "python": side.spec.python,
        "code": str(side.code_dir),
        **hello,
    }
