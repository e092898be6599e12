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

With `--nproc-per-node N` the side is a data-parallel world: this process launches N ranks
through the side's own torchrun engine (b3core's `launch`) and only watches them. The ranks
inherit its stdin and stdout; rank 0 reads each request and passes it to the others (over a
gloo group of their own), every rank runs it (a block is then its slowest rank's time), and
rank 0 answers. A rank that fails exits, after writing its failure to stderr; the engine stops
the others, and this process answers the request with that failure, naming the rank, and ends.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


class Worker:
    def __init__(self, world: dict | None = None) -> None:
        self.ready = None
        self.world = world or {}  # a rank's world_size and backend; empty outside DDP

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
            **self.world,
        }

    def prepare(self, spec: dict, warmup: int, seed: int) -> dict:
        from b3core.measuring.runner import prepare
        from b3core.spec.step import StepSpec

        self.release()
        step = StepSpec.from_dict(spec)
        ready = prepare(step, warmup=warmup, seed=seed)
        self.ready = ready
        return {
            **self.world,
            "step_s": ready.last_warmup_step_s,
            "warmup": ready.warmup.to_dict(),
            "device": str(ready.device),
            "workload": ready.workload.info.to_dict(),
            **_model_source(step.model),
        }

    def block(self, calls: int, steps: int) -> dict:
        ready = self.ready
        skipped = ready.skipped_updates
        if self.world:
            from b3core.measuring.runner import timed_blocks

            times, rank_times = timed_blocks(ready, steps, calls)
            extra = {"rank_times": [[t / steps for t in rank] for rank in rank_times]}
        else:  # every b3core a side may hold has this
            from b3core.measuring.clocks import time_block

            times = [time_block(ready.call, ready.device, steps) for _ in range(calls)]
            extra = {}
        skipped = ready.skipped_updates - skipped
        return {"times": [t / steps for t in times], "skipped_updates": skipped, **extra}

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


def _answer(worker: Worker, request: dict) -> tuple[dict, BaseException | None]:
    op = request.pop("op")
    try:
        return getattr(worker, op)(**request), None
    except Exception as exc:  # noqa: BLE001 - every failure is answered
        traceback.print_exc()
        return _failure(exc), exc


def _own_protocol():
    """The original stdout, for answers only; from here on the process's prints (the side's
    included) go to stderr."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def _import_runner() -> None:
    try:  # import torch and the side's runner now, while the other side's worker does too
        import b3core.measuring.runner  # noqa: F401
    except Exception:  # noqa: BLE001 - the first request that needs it answers the failure
        pass


def serve() -> int:
    """One process: answer requests until `exit` or the end of stdin; the worker outlives a
    failed request."""
    protocol = _own_protocol()
    worker = Worker()
    _import_runner()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "exit":
            break
        reply, failed = _answer(worker, request)
        if failed is not None and reply["error"] == "out_of_memory":
            worker.release()  # out here the traceback, and the tensors its frames held, are gone
        protocol.write(json.dumps(reply, default=str) + "\n")
    return 0


def launch_ranks(code_dir: str, nproc_per_node: int, device: str) -> int:
    """Run this file as a world of ranks through the side's torchrun engine; answer the request
    during which a rank failed with that rank's failure."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # the ranks inherit fd 1: left as it is
    sys.stdout = sys.stderr
    from b3core.measuring.distributed import RankFailed, launch

    args = (__file__, code_dir, "--rank", "--device", device)
    try:
        launch(sys.executable, args, nproc_per_node=nproc_per_node)
    except RankFailed as exc:
        try:
            failure = json.loads(exc.said)
        except json.JSONDecodeError:
            failure = {"error": "error", "message": f"exit {exc.exitcode}: {exc.said}"}
        failure["message"] = f"rank {exc.rank}: {failure.get('message', '')}"
        protocol.write(json.dumps(failure) + "\n")
        return 1
    return 0


def serve_rank(device: str) -> int:
    """One rank: rank 0 reads each request and passes it on; every rank runs it; rank 0
    answers. A failure ends the rank (its peers may be inside a collective that it will never
    join): its last line of stderr is the failure, for the launcher to answer with."""
    _die_with_parent()
    import torch.distributed as dist

    from b3core.measuring.distributed import process_group
    from b3core.workloads.devices import rank_device, resolve_device

    first = int(os.environ["RANK"]) == 0
    protocol = _own_protocol() if first else None
    _import_runner()
    try:
        group = process_group(rank_device(resolve_device(device)))
        rank = group.__enter__()
    except Exception as exc:  # noqa: BLE001 - answered by the launcher
        return _end_rank(exc)
    worker = Worker({"world_size": rank.world_size, "backend": rank.backend})
    control = dist.new_group(backend="gloo")  # requests are host objects, on any device
    while True:
        request = [json.loads(sys.stdin.readline() or '{"op": "exit"}') if first else None]
        dist.broadcast_object_list(request, src=0, group=control)
        if request[0]["op"] == "exit":
            break
        reply, failed = _answer(worker, request[0])
        if failed is not None:
            return _end_rank(failed)
        if first:
            protocol.write(json.dumps(reply, default=str) + "\n")
    group.__exit__(None, None, None)
    return 0


def _end_rank(exc: BaseException) -> int:
    from b3core.measuring.distributed import OUT_OF_MEMORY_EXIT

    failure = _failure(exc)
    print(json.dumps(failure), file=sys.stderr, flush=True)
    os._exit(OUT_OF_MEMORY_EXIT if failure["error"] == "out_of_memory" else 1)


def _die_with_parent() -> None:
    """A rank dies with its launcher, even one killed outright (the ranks lead sessions of
    their own, out of reach of a kill of the launcher's group). Linux only; elsewhere the
    collectives' timeout ends them."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("code_dir")  # unused: it names the side in a process list
    parser.add_argument("--nproc-per-node", type=int)
    parser.add_argument("--rank", action="store_true")  # one of the ranks launched here
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.rank:
        return serve_rank(args.device)
    if args.nproc_per_node:
        return launch_ranks(args.code_dir, args.nproc_per_node, args.device)
    return serve()


if __name__ == "__main__":
    # this file's folder (the parent's b3core) is first on the path: the side's code must win
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.exit(main(sys.argv[1:]))
