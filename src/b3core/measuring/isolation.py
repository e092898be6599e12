"""Measuring in a fresh process: no allocator fragmentation or leaked tensors from earlier
configurations, and a crash or OOM kill takes only the worker down.

Run as `python -m b3core.measuring.isolation` with a JSON request on stdin; it answers one
JSON line. The worker measures through the same runner as every other harness.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from b3core.errors import B3Error, StepOutOfMemory
from b3core.measuring.protocol import OUT_OF_MEMORY, Failure
from b3core.measuring.result import StepResult
from b3core.spec.step import StepSpec, Timing


def measure_isolated(
    spec: StepSpec, timing: Timing, *, memory_budget: int | None = None, seed: int = 0
) -> StepResult:
    request = {
        "spec": spec.to_dict(),
        "timing": timing.to_dict(),
        "memory_budget": memory_budget,
        "seed": seed,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "b3core.measuring.isolation"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        reason = f"worker killed by {name}" + (
            " (likely out of memory)" if name == "SIGKILL" else ""
        )
        raise StepOutOfMemory(spec.label, reason)
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise B3Error(f"isolated worker for {spec.label} failed: {detail}") from None
    failure = Failure.from_answer(answer)
    if failure is not None:
        failure.raise_for(spec.label)
    return StepResult.from_dict(answer["result"])


def measure_in_ranks(
    spec: StepSpec,
    timing: Timing,
    nproc_per_node: int,
    *,
    memory_budget: int | None = None,
    seed: int = 0,
) -> StepResult:
    """The step as `nproc_per_node` fresh data-parallel ranks (DDP through torchrun's engine):
    rank 0's result. A rank that does not fit ends the world, which is StepOutOfMemory here."""
    from b3core.measuring.distributed import RankFailed, launch

    request = (spec.to_dict(), timing.to_dict(), memory_budget, seed)
    try:
        answers = launch(_measure_rank, request, nproc_per_node=nproc_per_node)
    except RankFailed as failed:
        if failed.failure.kind == OUT_OF_MEMORY:
            message = f"rank {failed.rank}: {failed.failure.message}"
            raise StepOutOfMemory(spec.label, message) from None
        raise
    return StepResult.from_dict(answers[0])


def _measure_rank(spec: dict, timing: dict, memory_budget: int | None, seed: int) -> dict:
    """One rank of measure_in_ranks (runs in a process of torchrun's engine)."""
    from b3core.measuring.distributed import leave, process_group
    from b3core.measuring.runner import measure
    from b3core.workloads.build import resolve

    step = resolve(StepSpec.from_dict(spec))
    with process_group(step.device):
        try:
            result = measure(step, Timing.from_dict(timing), memory_budget=memory_budget, seed=seed)
        except StepOutOfMemory as oom:
            leave(Failure.of(oom))  # the engine stops the other ranks
    return result.to_dict()


def measure_maybe_isolated(
    spec: StepSpec,
    timing: Timing,
    *,
    isolate: bool,
    memory_budget: int | None = None,
    seed=0,
    nproc_per_node: int | None = None,
) -> StepResult:
    if nproc_per_node:
        return measure_in_ranks(
            spec, timing, nproc_per_node, memory_budget=memory_budget, seed=seed
        )
    if isolate:
        return measure_isolated(spec, timing, memory_budget=memory_budget, seed=seed)
    from b3core.measuring.runner import measure

    return measure(spec, timing, memory_budget=memory_budget, seed=seed)


def _serve() -> int:
    from b3core.measuring.runner import measure

    request = json.loads(sys.stdin.read())
    try:
        result = measure(
            StepSpec.from_dict(request["spec"]),
            Timing.from_dict(request["timing"]),
            memory_budget=request.get("memory_budget"),
            seed=request.get("seed", 0),
        )
        answer = {"result": result.to_dict()}
    except Exception as exc:  # noqa: BLE001 - every failure is answered, in one format
        answer = Failure.of(exc).to_dict()
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
