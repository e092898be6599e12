"""The parent's end of the worker protocol (see `worker`): start a side's workers, ask, read
the answer, and end them, whatever happens. The parent asks one worker at a time and waits for
its answer, so the two sides never run at once, on a CPU or on a shared GPU.

A side's fresh worker for each epoch is either a child forked by the side's server (`Zygote`:
torch and the side's code imported once, a worker in milliseconds) or a fresh interpreter
(`ExecWorker`: seconds of imports per epoch; also each data-parallel world).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from b3core.errors import B3Error
from b3core.measuring.protocol import BAD_INPUT, IMPORT, OUT_OF_MEMORY, Failure
from b3core.studies.compare import worker as worker_module
from b3core.studies.compare.sides import Side

WORKER_FILE = Path(worker_module.__file__)
EXIT_GRACE_S = 5.0
# The longest a request may take (a first build with torch.compile, say) before its worker is
# taken for hung
ANSWER_TIMEOUT_S = 900.0
CONTROL_TIMEOUT_S = 600.0  # a side's server importing torch and the side's code


class CaseFailed(Exception):
    """The side could not run this case (it did not fit, say); the other cases can go on."""

    def __init__(self, side: str, message: str):
        super().__init__(f"{side}: {message}")
        self.side, self.message = side, message


class CannotFork(Exception):
    """The side's server would not fork safely (its imports started threads)."""


@dataclass(frozen=True)
class World:
    """A side run data-parallel: `nproc_per_node` ranks on `device` (its name, as in a spec)."""

    nproc_per_node: int
    device: str


def side_environment(side: Side, extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment, the side's code first on the path, and `extra` where the
    user set nothing."""
    env = {**extra, **os.environ}
    env["PYTHONPATH"] = os.pathsep.join([*side.python_path, *filter(None, [env.get("PYTHONPATH")])])
    return env


def side_label(side: Side) -> str:
    sha = f" ({side.sha[:10]})" if side.sha else ""
    return f"{side.name.upper()}{sha}"


class StderrLog:
    """A worker's stderr, kept in a temporary file: its last line explains a death."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()

    def last_line(self) -> str:
        self.file.seek(0)
        lines = self.file.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def close(self) -> None:
        self.file.close()


def _start(side: Side, *arguments: str, env: dict, stdin, stdout, stderr: StderrLog, pass_fds=()):
    """The side's interpreter running the worker file, in a session of its own (so that Ctrl-C
    reaches only the parent, which then ends the workers itself). Its command line names the
    side's code, which tells the workers of a comparison apart in a process list."""
    try:
        return subprocess.Popen(
            [side.spec.python, str(WORKER_FILE), str(side.code_dir), *arguments],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr.file,
            text=True,
            cwd=side.code_dir,
            env=side_environment(side, env),
            start_new_session=True,
            pass_fds=pass_fds,
        )
    except OSError as exc:
        stderr.close()
        raise B3Error(f"{side_label(side)}: cannot start {side.spec.python!r}: {exc}") from None


class Worker:
    """One side's worker for one epoch, spoken to in JSON lines over `requests`/`answers`."""

    def __init__(self, side: Side, requests, answers, stderr: StderrLog):
        self.side, self.requests, self.answers, self.stderr = side, requests, answers, stderr

    @property
    def label(self) -> str:
        return side_label(self.side)

    def _read_answer(self, timeout: float) -> str:
        ready, _, _ = select.select([self.answers], [], [], timeout)
        if not ready:
            self.kill()
            raise B3Error(f"{self.label}'s worker gave no answer in {timeout:g} s")
        return self.answers.readline()

    def ask(self, op: str, timeout: float = ANSWER_TIMEOUT_S, **arguments) -> dict:
        """Send one request and wait for its answer. A failure of the case raises CaseFailed;
        a side that cannot run at all, or a dead or hung worker, raises B3Error."""
        try:
            self.requests.write(json.dumps({"op": op, **arguments}) + "\n")
            self.requests.flush()
            line = self._read_answer(timeout)
        except (BrokenPipeError, OSError, ValueError):
            line = ""
        if not line:
            raise B3Error(f"{self.label}'s worker died ({self.ended()}): {self.stderr.last_line()}")
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise B3Error(f"{self.label}: its worker answered {line.strip()[:80]!r}, not b3's")
        failure = Failure.from_answer(answer)
        if failure is None:
            return answer
        if failure.kind == OUT_OF_MEMORY:
            raise CaseFailed(self.side.name, f"out of memory ({failure.message})")
        if failure.kind == IMPORT:
            raise B3Error(
                f"{self.label}: its code does not provide what b3 needs: {failure.message}"
            )
        if failure.kind == BAD_INPUT:
            raise B3Error(f"{self.label}: {failure.message}")
        raise B3Error(f"{self.label}: {op} failed: {failure.message}")

    def retire(self) -> None:
        """Ask the worker to exit, without waiting."""
        if not self.requests.closed:
            try:
                self.requests.write(json.dumps({"op": "exit"}) + "\n")
                self.requests.close()
            except OSError:
                pass

    def ended(self) -> str:
        """Wait for the end of a worker that is dying; how it ended."""
        raise NotImplementedError

    def wait(self, timeout: float) -> bool:
        """Whether the worker ended within `timeout` seconds."""
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def close(self, grace: float = EXIT_GRACE_S) -> None:
        """End the worker: ask it to exit, then kill it if it has not within `grace` seconds.
        Closing twice is fine."""
        self.retire()
        if not self.wait(grace):
            self.kill()
        self.answers.close()


class ExecWorker(Worker):
    """A fresh interpreter (a world of ranks, given a World)."""

    def __init__(self, side: Side, world: World | None = None, env: dict | None = None):
        ranks = []
        if world is not None:
            ranks = ["--nproc-per-node", str(world.nproc_per_node), "--device", world.device]
        stderr = StderrLog()
        pipe = subprocess.PIPE
        self.proc = _start(side, *ranks, env=env or {}, stdin=pipe, stdout=pipe, stderr=stderr)
        super().__init__(side, self.proc.stdin, self.proc.stdout, stderr)

    def ended(self) -> str:
        return f"exit {self.proc.wait()}"

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        kill_process_group(self.proc)
        if not self.requests.closed:
            try:  # a rank left behind reads the end of its requests, and exits
                self.requests.close()
            except OSError:
                pass

    def close(self, grace: float = EXIT_GRACE_S) -> None:
        if self.stderr.file.closed:
            return
        super().close(grace)
        self.stderr.close()


class ForkedWorker(Worker):
    """A child of a side's server, spoken to over its own socket. It has ended when the socket
    reads its end: no other process holds the worker's end of it."""

    def __init__(self, side: Side, pid: int, channel: socket.socket, stderr: StderrLog):
        self.pid, self.channel = pid, channel
        super().__init__(side, channel.makefile("w"), channel.makefile("r"), stderr)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select(
                [self.channel], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                return False
            try:
                if not self.channel.recv(65536):
                    return True
            except OSError:
                return True

    def ended(self) -> str:
        return "ended" if self.wait(EXIT_GRACE_S) else "hung"

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait(EXIT_GRACE_S)

    def close(self, grace: float = EXIT_GRACE_S) -> None:
        if self.channel.fileno() < 0:
            return
        super().close(grace)
        self.channel.close()


class Zygote:
    """A side's server: one interpreter that has imported torch and the side's code, forking a
    fresh worker for each epoch. Its children share its session, so ending its process group
    ends them all."""

    def __init__(self, side: Side, env: dict | None = None):
        self.side = side
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.stderr = StderrLog()
        try:
            self.proc = _start(
                side,
                "--zygote",
                str(theirs.fileno()),
                env=env or {},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.stderr,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()

    def _send(self, request: dict, fds: tuple[int, ...] = ()) -> None:
        try:
            socket.send_fds(self.control, [json.dumps(request).encode()], list(fds))
        except OSError:
            pass  # the answer that does not come says so

    def _answer(self) -> dict:
        try:
            ready, _, _ = select.select([self.control], [], [], CONTROL_TIMEOUT_S)
            message = self.control.recv(worker_module.CONTROL_MESSAGE_BYTES) if ready else b""
        except OSError:
            message = b""
        if not message:
            self.kill()
            raise B3Error(
                f"{side_label(self.side)}'s worker server died: {self.stderr.last_line()}"
            )
        return json.loads(message)

    def _request(self, request: dict, fds: tuple[int, ...] = ()) -> dict:
        self._send(request, fds)
        return self._answer()

    def start_preload(self, model: str) -> None:
        """Ask the server to import the model's own code once, before any fork; `preloaded`
        waits for it (so that several servers import at once)."""
        self._send({"op": "preload", "model": model})

    def preloaded(self) -> None:
        failure = Failure.from_answer(self._answer())
        if failure is not None:
            raise B3Error(f"{side_label(self.side)}: {failure.message}")

    def fork(self, seed: int, shift_layout: bool = True) -> ForkedWorker:
        """A fresh worker, its heap and mapping area shifted by amounts drawn from `seed`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"op": "fork", "seed": seed, "shift_layout": shift_layout}
        try:
            answer = self._request(request, (theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if "pid" not in answer:
            ours.close()
            raise CannotFork(answer.get("message", "no reason given"))
        return ForkedWorker(self.side, answer["pid"], ours, self.stderr)

    def kill(self) -> None:
        kill_process_group(self.proc)

    def close(self, grace: float = EXIT_GRACE_S) -> None:
        """End the server and every worker it forked."""
        if self.stderr.file.closed:
            return
        if self.proc.poll() is None:
            try:
                socket.send_fds(self.control, [b'{"op": "exit"}'], [])
            except OSError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # the server and any child still in its group
        self.control.close()
        self.stderr.close()


def kill_process_group(proc: subprocess.Popen) -> None:
    """Kill a process that leads its own session, and every process in its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def close_all(workers: Iterable[Worker | Zygote], grace: float = EXIT_GRACE_S) -> None:
    """End several workers within one shared grace period."""
    workers = list(workers)
    for worker in workers:
        if isinstance(worker, Worker):
            worker.retire()
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.close(max(0.0, deadline - time.monotonic()))
