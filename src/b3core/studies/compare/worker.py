"""One side's worker: a long-lived process that imports that side's code and times blocks of
steps when the parent asks, and only then (so two workers never run at once).

The parent runs this file by path with the side's interpreter and its code first on PYTHONPATH,
so everything timed (b3core's runner and clocks, the models, torch) is the side's own; this file
only speaks the protocol, with the standard library. Requests and answers are JSON lines: the
requests on stdin, the answers on the process's original stdout, which nothing else may write
to (the side's prints go to stderr).

Requests: hello; prepare {spec, warmup, seed}; block {calls, steps}; release; exit.
A failure answers {"error": KIND, "message": ONE LINE}. KIND is out_of_memory (the case does
not fit this side), bad_input (the side rejects the case: an unknown model, say), import (the
side's code lacks what is needed) or error (anything else).
"""

from __future__ import annotations

import json
import os
import sys
import traceback


class Worker:
    def __init__(self) -> None:
        self.ready = None

    def hello(self) -> dict:
        import b3core
        from b3core.measuring.machine import machine_record

        return {
            "b3core_version": getattr(b3core, "__version__", None),
            "b3core_path": os.path.dirname(os.path.abspath(b3core.__file__)),
            "b3core_file": os.path.abspath(b3core.__file__),
            "python": sys.executable,
            "python_version": sys.version.split()[0],
            "machine": machine_record(),
        }

    def prepare(self, spec: dict, warmup: int, seed: int) -> dict:
        from b3core.measuring.runner import prepare
        from b3core.spec.step import StepSpec

        self.release()
        step = StepSpec.from_dict(spec)
        ready = prepare(step, warmup=warmup, seed=seed)
        self.ready = ready
        return {
            "step_s": ready.last_warmup_step_s,
            "warmup": ready.warmup.to_dict(),
            "device": str(ready.device),
            "workload": ready.workload.info.to_dict(),
            **_model_source(step.model),
        }

    def block(self, calls: int, steps: int) -> dict:
        from b3core.measuring.clocks import time_block

        ready = self.ready
        skipped = ready.skipped_updates
        times = [time_block(ready.call, ready.device, steps) / steps for _ in range(calls)]
        return {"times": times, "skipped_updates": ready.skipped_updates - skipped}

    def release(self) -> dict:
        if self.ready is None:
            return {}
        device, self.ready = self.ready.device, None
        from b3core.measuring.memory import release_memory

        release_memory(device)
        return {}


def _model_source(name: str) -> dict:
    """Where the model's factory was imported from, for a user's model (import path or entry
    point): the parent checks that each side timed its own tree's copy."""
    import inspect

    from b3core.workloads.models import get_model_spec

    model = get_model_spec(name)
    if model.origin not in ("import path", "entry point"):
        return {}
    return {"model_module": model.builder.__module__, "model_file": inspect.getfile(model.builder)}


def _is_out_of_memory(exc: BaseException) -> bool:
    try:  # the side's own judgement, which knows its torch's errors
        from b3core.measuring.memory import is_out_of_memory
    except Exception:  # noqa: BLE001 - a side without it: judge by the exception's name
        names = ("StepOutOfMemory", "OutOfMemoryError", "MemoryBudgetExceeded", "MemoryError")
        return type(exc).__name__ in names
    return type(exc).__name__ == "StepOutOfMemory" or is_out_of_memory(exc)


def _failure(exc: BaseException) -> dict:
    kind = "error"
    if _is_out_of_memory(exc):
        kind = "out_of_memory"
    elif isinstance(exc, ImportError):
        kind = "import"
    elif any(cls.__name__ == "B3Error" for cls in type(exc).__mro__):
        kind = "bad_input"
    text = str(exc).strip().splitlines()
    return {"error": kind, "message": f"{type(exc).__name__}: {text[0] if text else ''}"}


def serve() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # from here on, stdout (the side's prints included) goes to stderr
    sys.stdout = sys.stderr
    worker = Worker()
    try:  # import torch and the side's runner now, while the other side's worker does too
        import b3core.measuring.runner  # noqa: F401
    except Exception:  # noqa: BLE001 - the first request that needs it answers the failure
        pass
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "exit":
            break
        out_of_memory = False
        try:
            reply = json.dumps(getattr(worker, op)(**request), default=str)
        except Exception as exc:  # noqa: BLE001 - every failure is answered, and the worker lives
            traceback.print_exc()
            failure = _failure(exc)
            reply, out_of_memory = json.dumps(failure), failure["error"] == "out_of_memory"
        if out_of_memory:
            worker.release()  # out here the traceback, and the tensors its frames held, are gone
        protocol.write(reply + "\n")
    return 0


if __name__ == "__main__":
    # this file's folder (the parent's b3core) is first on the path: the side's code must win
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.exit(serve())
