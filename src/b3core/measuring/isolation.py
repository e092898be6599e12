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
    if "oom" in answer:
        raise StepOutOfMemory(spec.label, answer["oom"])
    if "error" in answer:
        raise B3Error(answer["error"])
    return StepResult.from_dict(answer["result"])


def measure_maybe_isolated(
    spec: StepSpec, timing: Timing, *, isolate: bool, memory_budget: int | None = None, seed=0
) -> StepResult:
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
    except StepOutOfMemory as oom:
        answer = {"oom": oom.reason}
    except B3Error as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
