"""The parent's end of the worker protocol (see `worker`): start a side's worker, ask, read the
answer, and end it, whatever happens. The parent asks one worker at a time and waits for its
answer, so the two sides never run at once, on a CPU or on a shared GPU."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from b3core.errors import B3Error
from b3core.studies.compare import worker as worker_module
from b3core.studies.compare.sides import Side

WORKER_FILE = Path(worker_module.__file__)
EXIT_GRACE_S = 5.0
# The longest a request may take (a first build with torch.compile, say) before its worker is
# taken for hung
ANSWER_TIMEOUT_S = 900.0


class CaseFailed(Exception):
    """The side could not run this case (it did not fit, say); the other cases can go on."""

    def __init__(self, side: str, message: str):
        super().__init__(f"{side}: {message}")
        self.side, self.message = side, message


@dataclass(frozen=True)
class World:
    """A side run data-parallel: `nproc_per_node` ranks on `device` (its name, as in a spec)."""

    nproc_per_node: int
    device: str


class WorkerProcess:
    """One side's worker (a world of ranks, given a World). Started in its own session, so
    that Ctrl-C reaches only the parent, which then ends the workers itself. Its command line
    names the side's code (unused by the worker; it tells the workers of a comparison apart in
    a process list)."""

    def __init__(self, side: Side, world: World | None = None):
        self.side = side
        ranks = []
        if world is not None:
            ranks = ["--nproc-per-node", str(world.nproc_per_node), "--device", world.device]
        self.stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [*side.python_path, *filter(None, [env.get("PYTHONPATH")])]
        )
        try:
            self.proc = subprocess.Popen(
                [side.spec.python, str(WORKER_FILE), str(side.code_dir), *ranks],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                text=True,
                cwd=side.code_dir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self.stderr.close()
            raise B3Error(f"{self.label}: cannot start {side.spec.python!r}: {exc}") from None

    @property
    def label(self) -> str:
        sha = f" ({self.side.sha[:10]})" if self.side.sha else ""
        return f"{self.side.name.upper()}{sha}"

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def _read_answer(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise B3Error(f"{self.label}'s worker gave no answer in {timeout:g} s")
        return self.proc.stdout.readline()

    def ask(self, op: str, timeout: float = ANSWER_TIMEOUT_S, **arguments) -> dict:
        """Send one request and wait for its answer. A failure of the case raises CaseFailed;
        a side that cannot run at all, or a dead or hung worker, raises B3Error."""
        try:
            self.proc.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
            self.proc.stdin.flush()
            line = self._read_answer(timeout)
        except (BrokenPipeError, OSError, ValueError):
            line = ""
        if not line:
            code = self.proc.wait()
            raise B3Error(f"{self.label}'s worker died (exit {code}): {self._stderr_tail()}")
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise B3Error(f"{self.label}: its worker answered {line.strip()[:80]!r}, not b3's")
        if "error" not in answer:
            return answer
        kind, message = answer["error"], answer.get("message", "")
        if kind == "out_of_memory":
            raise CaseFailed(self.side.name, f"out of memory ({message})")
        if kind == "import":
            raise B3Error(f"{self.label}: its code does not provide what b3 needs: {message}")
        if kind == "bad_input":
            raise B3Error(f"{self.label}: {message}")
        raise B3Error(f"{self.label}: {op} failed: {message}")

    def retire(self) -> None:
        """Ask the worker to exit, without waiting: it tears down while others start."""
        if self.proc.poll() is None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
            except OSError:
                pass

    def kill(self) -> None:
        """Kill the worker's whole process group (it leads its own session)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if not self.proc.stdin.closed:
            try:  # a rank left behind reads the end of its requests, and exits
                self.proc.stdin.close()
            except OSError:
                pass

    def close(self, grace: float = EXIT_GRACE_S) -> None:
        """End the worker: ask it to exit, then kill it if it has not within `grace` seconds.
        Closing twice is fine."""
        if self.stderr.closed:
            return
        self.retire()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc.stdout.close()
        self.stderr.close()


def close_all(workers: Iterable[WorkerProcess], grace: float = EXIT_GRACE_S) -> None:
    """End several workers within one shared grace period."""
    workers = list(workers)
    for worker in workers:
        worker.retire()
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.close(max(0.0, deadline - time.monotonic()))
