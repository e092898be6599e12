"""One side's worker: the process that imports that side's code and times blocks of steps when
the parent asks, and only then (so two workers never run at once).

The parent runs this file by path with the side's interpreter and its code first on PYTHONPATH,
so everything timed (b3core, the models, torch) is the side's own. This file only speaks the
protocol (b3core.measuring.protocol), with the standard library, and reaches the side through
its versioned entry point (b3core.measuring.endpoint); b3core before 0.4, which had none, is
adapted in one place, `LegacyEndpoint`. Requests and answers are JSON lines.

Three ways to run:
- `--zygote FD`: a per-side server. It imports torch and the side's code once, then forks a
  fresh worker for each epoch on request, over the control socket FD (a Unix SOCK_SEQPACKET
  socket; each fork request carries the new worker's own socket). It never builds a model or
  runs a torch operation, so no OpenMP pool or CUDA context exists when it forks; it refuses to
  fork (and the parent falls back to fresh interpreters) once anything it imported started
  threads of its own.
- no option: one worker on stdin and stdout (a fresh interpreter per epoch).
- `--nproc-per-node N`: a data-parallel world. This process launches N ranks through the
  side's torchrun engine and watches them; rank 0 reads each request and passes it to the
  others (over a gloo group of their own), every rank runs it, rank 0 answers. A rank that
  fails exits with its failure's code after writing the failure to stderr; the engine stops the
  others, and this process answers with that failure, naming the rank.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import traceback
import warnings

CONTROL_MESSAGE_BYTES = 65536
# A fresh process's heap and mapping addresses come from the kernel's randomisation, but a
# forked one inherits its server's: each forked worker shifts both by a random amount before it
# builds anything, so that layout luck is drawn afresh per epoch (as in Stabilizer).
LAYOUT_SHIFT_PAGES = 256
PAGE = 4096


class LegacyEndpoint:
    """The entry point for a side whose b3core predates `b3core.measuring.endpoint` (0.2, 0.3):
    the same operations through the internals those versions had."""

    version = 0

    def __init__(self, world: dict | None = None) -> None:
        self.ready = None
        self.world = world or {}

    def hello(self) -> dict:
        import b3core
        from b3core.measuring.machine import machine_record

        return {
            "endpoint_version": 0,
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
        self.ready = prepare(StepSpec.from_dict(spec), warmup=warmup, seed=seed)
        return {
            **self.world,
            "pid": os.getpid(),
            "parent_pid": os.getppid(),
            "step_s": self.ready.last_warmup_step_s,
            "warmup": self.ready.warmup.to_dict(),
            "device": str(self.ready.device),
            "workload": self.ready.workload.info.to_dict(),
        }

    def block(self, calls: int, steps: int) -> dict:
        from b3core.measuring.runner import timed_blocks

        skipped = self.ready.skipped_updates
        times, rank_times = timed_blocks(self.ready, steps, calls)
        answer = {"times": [t / steps for t in times], "skipped_updates": 0}
        answer["skipped_updates"] = self.ready.skipped_updates - skipped
        if rank_times is not None:
            answer["rank_times"] = [[t / steps for t in rank] for rank in rank_times]
        return answer

    def release(self) -> dict:
        if self.ready is not None:
            from b3core.measuring.memory import release_memory

            device, self.ready = self.ready.device, None
            release_memory(device)
        return {}

    def handle(self, request: dict) -> tuple[dict, dict | None]:
        request = dict(request)
        operation = request.pop("op")
        try:
            return getattr(self, operation)(**request), None
        except Exception as exc:  # noqa: BLE001 - every failure is answered
            failure = _legacy_failure(exc)
        if failure["error"] == "out_of_memory":
            self.release()
        return failure, failure


def _legacy_failure(exc: BaseException) -> dict:
    """The protocol's failure, judged as b3core before 0.4 judged it."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    try:
        from b3core.measuring.memory import is_out_of_memory

        out_of_memory = is_out_of_memory(exc)
    except Exception:  # noqa: BLE001 - judge by the exception's name alone
        out_of_memory = False
    kind = "error"
    if out_of_memory or names & {"StepOutOfMemory", "OutOfMemoryError", "MemoryError"}:
        kind = "out_of_memory"
    elif "ImportError" in names:
        kind = "import"
    elif "B3Error" in names:
        kind = "bad_input"
    lines = str(exc).strip().splitlines()
    return {"error": kind, "message": f"{type(exc).__name__}: {lines[0] if lines else ''}"}


def failure_of(exc: BaseException) -> dict:
    """The protocol's failure for an exception, judged by the side's own classifier."""
    try:
        from b3core.measuring.protocol import Failure
    except ImportError:  # b3core before 0.4
        return _legacy_failure(exc)
    return Failure.of(exc).to_dict()


def endpoint_class():
    """The side's entry point, or the adapter for a b3core that has none."""
    import importlib.util

    if importlib.util.find_spec("b3core.measuring.endpoint") is None:
        return LegacyEndpoint
    from b3core.measuring.endpoint import StepEndpoint

    return StepEndpoint


def fields_unknown_here(set_fields) -> list[str]:
    """The step's fields, set away from their defaults, that this side's StepSpec lacks: its
    b3core would drop them and build another step than the one asked for."""
    if not set_fields:
        return []
    import dataclasses

    from b3core.spec.step import StepSpec

    known = {f.name for f in dataclasses.fields(StepSpec)}
    return [name for name in set_fields if name not in known]


def handle(endpoint, request: dict) -> tuple[dict, dict | None]:
    """The endpoint's answer to a request (and the failure it answered, or None); a step with a
    field this side does not know is refused here, for every version of the endpoint."""
    unknown = fields_unknown_here(request.pop("set_fields", ()))
    if not unknown:
        return endpoint.handle(request)
    flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
    failure = {
        "error": "bad_input",
        "message": f"this revision's b3core does not take {flags}: it would time another step "
        "(compare revisions that both have it, or leave it out)",
    }
    return failure, failure


def serve(endpoint, requests, answers) -> int:
    """Answer requests until `exit` or their end; the worker outlives a failed request."""
    for line in requests:
        request = json.loads(line)
        if request["op"] == "exit":
            break
        answer, failure = handle(endpoint, request)
        if failure is not None:
            print(f"b3 worker: {request['op']}: {answer['message']}", file=sys.stderr, flush=True)
        answers.write(json.dumps(answer, default=str) + "\n")
        answers.flush()
    return 0


def _answers_only_on_stdout():
    """The original stdout, for answers only; from here on the process's prints (the side's
    included) go to stderr."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return answers


def _import_side() -> type:
    """The side's entry point with torch and its runner imported, so that every worker (or
    every fork) starts with them; a failure here is answered by the first request."""
    endpoint = endpoint_class()
    try:
        import b3core.measuring.runner  # noqa: F401
    except Exception:  # noqa: BLE001 - the first request that needs it answers the failure
        pass
    return endpoint


def serve_stdio() -> int:
    answers = _answers_only_on_stdout()
    return serve(_import_side()(), sys.stdin, answers)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _shift_layout(seed: int) -> list:
    """Shift the heap and the mapping area by random amounts; what is returned must be kept."""
    import ctypes
    import mmap

    rng = random.Random(seed)
    kept: list = [mmap.mmap(-1, PAGE * rng.randrange(1, LAYOUT_SHIFT_PAGES))]
    try:
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        kept.append(libc.malloc(ctypes.c_size_t(16 * rng.randrange(1, PAGE))))
    except (OSError, AttributeError):
        pass
    return kept


class Zygote:
    """The per-side server: imports once, forks a fresh worker per request."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.endpoint = _import_side()
        self.threads_at_rest = _threads()

    def reply(self, answer: dict) -> None:
        self.control.send(json.dumps(answer, default=str).encode())

    def preload(self, model: str) -> dict:
        """Import what every worker would import before any fork: the model's own code (a
        user's module, timm, torchvision) and what a first optimizer imports (torch._dynamo,
        a second and a half). The model and an optimizer are built once on the meta device:
        no memory, no weights."""
        import torch

        from b3core.workloads.models import get_model_spec

        get_model_spec(model)
        try:
            from b3core.workloads.models import create_model

            with torch.device("meta"):
                torch.optim.SGD(create_model(model).parameters(), lr=0.1)
        except Exception:  # noqa: BLE001 - a builder meta tensors cannot run; imports are kept
            pass
        self.threads_at_rest = max(self.threads_at_rest, _threads())
        return {"threads": self.threads_at_rest}

    def fork(self, fd: int, seed: int, shift_layout: bool = True) -> dict:
        threads = _threads()
        if threads > self.threads_at_rest:
            os.close(fd)
            return {
                "error": "error",
                "message": f"cannot fork safely: {threads} threads are running, "
                f"{self.threads_at_rest} were at rest",
            }
        sys.stderr.flush()
        with warnings.catch_warnings():  # the BLAS pools at rest are fork-safe
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.control.close()
                kept = _shift_layout(seed) if shift_layout else []  # noqa: F841 - held for life
                channel = socket.socket(fileno=fd)
                requests, answers = channel.makefile("r"), channel.makefile("w")
                code = serve(self.endpoint(), requests, answers)
            except BaseException:  # noqa: BLE001 - a forked worker never returns into the server
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(fd)
        return {"pid": pid}

    def run(self) -> int:
        while True:
            message, fds, _, _ = socket.recv_fds(self.control, CONTROL_MESSAGE_BYTES, 1)
            _reap()
            if not message:
                return 0
            request = json.loads(message)
            op = request.pop("op")
            if op == "exit":
                return 0
            try:
                if op == "fork":
                    answer = self.fork(fds[0], **request)
                else:
                    answer = getattr(self, op)(**request)
            except Exception as exc:  # noqa: BLE001 - answered; the server goes on
                answer = failure_of(exc)
            self.reply(answer)


def _reap() -> None:
    """Collect the exit of every forked worker that has ended."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve_zygote(control_fd: int) -> int:
    os.dup2(2, 1)  # a forked worker answers on its own socket; prints go to stderr
    sys.stdout = sys.stderr
    control = socket.socket(fileno=control_fd)
    try:
        return Zygote(control).run()
    finally:
        control.close()


def launch_ranks(code_dir: str, nproc_per_node: int, device: str) -> int:
    """Run this file as a world of ranks through the side's torchrun engine; answer the request
    during which a rank failed with that rank's failure."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)  # the ranks inherit fd 1: left as it is
    sys.stdout = sys.stderr
    from b3core.measuring.distributed import RankFailed, launch

    args = (__file__, code_dir, "--rank", "--device", device)
    try:
        launch(sys.executable, args, nproc_per_node=nproc_per_node)
    except RankFailed as exc:
        if hasattr(exc, "failure"):  # b3core 0.4 and later: the rank's own failure
            failure = exc.failure.to_dict()
        else:  # before: the rank's last line of stderr
            try:
                failure = json.loads(exc.said)
            except json.JSONDecodeError:
                failure = {"error": "error", "message": f"exit {exc.exitcode}: {exc.said}"}
        failure["message"] = f"rank {exc.rank}: {failure.get('message', '')}"
        answers.write(json.dumps(failure) + "\n")
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
    answers = _answers_only_on_stdout() if first else None
    endpoint_type = _import_side()
    try:
        group = process_group(rank_device(resolve_device(device)))
        rank = group.__enter__()
    except Exception as exc:  # noqa: BLE001 - answered by the launcher
        _end_rank(failure_of(exc))
    endpoint = endpoint_type({"world_size": rank.world_size, "backend": rank.backend})
    control = dist.new_group(backend="gloo")  # requests are host objects, on any device
    while True:
        request = [json.loads(sys.stdin.readline() or '{"op": "exit"}') if first else None]
        dist.broadcast_object_list(request, src=0, group=control)
        if request[0]["op"] == "exit":
            break
        answer, failure = handle(endpoint, request[0])
        if failure is not None:
            _end_rank(answer)
        if first:
            answers.write(json.dumps(answer, default=str) + "\n")
    group.__exit__(None, None, None)
    return 0


def _end_rank(failure: dict) -> None:
    """Leave the world with the failure: through the side's `leave` (b3core 0.4 and later),
    whose note names this rank even when the engine sees a peer that it broke first."""
    try:
        from b3core.measuring.distributed import leave
        from b3core.measuring.protocol import Failure
    except ImportError:  # b3core before 0.4: only out of memory had a code of its own
        print(json.dumps(failure), file=sys.stderr, flush=True)
        os._exit(75 if failure["error"] == "out_of_memory" else 1)
    leave(Failure.from_answer(failure))


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
    parser.add_argument("--zygote", type=int, metavar="FD")
    parser.add_argument("--nproc-per-node", type=int)
    parser.add_argument("--rank", action="store_true")  # one of the ranks launched here
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.rank:
        return serve_rank(args.device)
    if args.nproc_per_node:
        return launch_ranks(args.code_dir, args.nproc_per_node, args.device)
    if args.zygote is not None:
        return serve_zygote(args.zygote)
    return serve_stdio()


if __name__ == "__main__":
    # this file's folder (the parent's b3core) is first on the path: the side's code must win
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    code = main(sys.argv[1:])
    # Everything served is answered: skip the interpreter's teardown of torch, which takes
    # seconds that the parent would wait before it starts the next round's servers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
