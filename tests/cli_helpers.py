"""Running the `b3` command as a user would: a fresh process, with extra code on its path; or,
where a fresh process is not what a test is about, the same command in this process."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from b3core.cli import main


def b3(*args: str, pythonpath: Path | None = None, timeout: float = 300):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "b3core.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def b3_here(*args: str) -> subprocess.CompletedProcess:
    """What b3() answers, without starting an interpreter (torch's import is seconds each)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exited:  # argparse's usage errors
            code = exited.code
    return subprocess.CompletedProcess(["b3", *args], code, out.getvalue(), err.getvalue())
