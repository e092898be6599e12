"""Running the `b3` command as a user would: a fresh process, with extra code on its path."""

import os
import subprocess
import sys
from pathlib import Path


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
