"""The versioned entry point through which another process runs steps with this b3core.

`b3 compare` times two revisions of a project, each with its own b3core: the parent's worker
speaks to a side only through this module, never through the side's internals, so that a
comparison with last month's commit keeps working when those internals change. A change of
what the operations take or answer raises VERSION; the worker adapts to older versions (and to
b3core before 0.4, which had no endpoint) in one place.

Operations (each answers a dict, or a `protocol.Failure`):
- hello: this side's b3core, interpreter and machine;
- prepare {spec, warmup, seed, key}: build and warm the step (a StepSpec's dict), held under
  `key` (default ""; since version 2 a process holds several, as `b3 align` times them);
- block {calls, steps, key}: `calls` timed calls of `steps` steps each, seconds per step;
- release {key}: drop the step (all of them without a key) and free its memory.
"""

from __future__ import annotations

import inspect
import os
import sys

from b3core.measuring.protocol import Failure

VERSION = 2


class StepEndpoint:
    """One process's steps, on request. Under DDP every rank holds one and runs each request;
    `world` is then the rank's world size and backend, given with every answer."""

    version = VERSION

    def __init__(self, world: dict | None = None) -> None:
        self.steps: dict = {}  # key -> ReadyStep
        self.world = world or {}

    def hello(self) -> dict:
        import b3core
        from b3core.measuring.machine import machine_record

        return {
            "endpoint_version": VERSION,
            "b3core_version": b3core.__version__,
            "b3core_path": os.path.dirname(os.path.abspath(b3core.__file__)),
            "b3core_file": os.path.abspath(b3core.__file__),
            "python": sys.executable,
            "python_version": sys.version.split()[0],
            "machine": machine_record(),
            **self.world,
        }

    def prepare(self, spec: dict, warmup: int, seed: int, key: str = "") -> dict:
        from b3core.measuring.runner import prepare
        from b3core.spec.step import StepSpec

        self.release(key)
        step = StepSpec.from_dict(spec)
        ready = self.steps[key] = prepare(step, warmup=warmup, seed=seed)
        return {
            **self.world,
            "pid": os.getpid(),
            "parent_pid": os.getppid(),
            "step_s": ready.last_warmup_step_s,
            "warmup": ready.warmup.to_dict(),
            "device": str(ready.device),
            "workload": ready.workload.info.to_dict(),
            **model_source(step.model),
        }

    def block(self, calls: int, steps: int, key: str = "") -> dict:
        from b3core.measuring.runner import timed_blocks

        ready = self.steps[key]
        skipped = ready.skipped_updates
        times, rank_times = timed_blocks(ready, steps, calls)
        answer = {
            "times": [t / steps for t in times],
            "skipped_updates": ready.skipped_updates - skipped,
        }
        if rank_times is not None:
            answer["rank_times"] = [[t / steps for t in rank] for rank in rank_times]
        return answer

    def release(self, key: str | None = None) -> dict:
        dropped = [self.steps.pop(k) for k in ([key] if key is not None else list(self.steps))
                   if k in self.steps]  # fmt: skip
        if dropped:
            from b3core.measuring.memory import release_memory

            device = dropped[0].device
            dropped.clear()
            release_memory(device)
        return {}

    def handle(self, request: dict) -> tuple[dict, Failure | None]:
        """Run one request: its answer, and the failure it answered (None when it ran). After
        an out-of-memory failure the steps are released, their frames gone."""
        request = dict(request)
        operation = request.pop("op")
        try:
            return getattr(self, operation)(**request), None
        except Exception as exc:  # noqa: BLE001 - every failure is answered
            failure = Failure.of(exc)
        if failure.kind == "out_of_memory":
            self.release()
        return failure.to_dict(), failure


def model_source(name: str) -> dict:
    """Where a user's model factory (an import path or entry point) was imported from: the
    parent checks that each side timed its own tree's copy."""
    from b3core.workloads.models import get_model_spec

    model = get_model_spec(name)
    if model.origin not in ("import path", "entry point"):
        return {}
    return {"model_module": model.builder.__module__, "model_file": inspect.getfile(model.builder)}
