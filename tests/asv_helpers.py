"""What the asv end-to-end tests share: a throwaway copy of this repository, git and asv."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINING = Path("src/b3core/workloads/training.py")

# Appended to training.py: every training step sleeps `factor` times its own compute after it.
SLOWDOWN = """

# Injected by b3's asv tests: a training step {factor:.0%} slower than its own compute.
import time as _time

_undelayed_step = Trainer.step


def _delayed_step(self, micro_batches):
    began = _time.perf_counter()
    loss = _undelayed_step(self, micro_batches)
    _time.sleep({factor} * (_time.perf_counter() - began))
    return loss


Trainer.step = _delayed_step
"""


def git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b3", "GIT_AUTHOR_EMAIL": "b3@test"}
    env.update(GIT_COMMITTER_NAME="b3", GIT_COMMITTER_EMAIL="b3@test")
    if date:  # asv orders commits by date
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    proc = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, env=env
    )
    return proc.stdout.strip()


def copy_b3(repo: Path) -> None:
    """The working tree's tracked src/, benchmarks/ and pyproject.toml, as the tests see them."""
    for name in git(REPO, "ls-files", "src", "benchmarks", "pyproject.toml").splitlines():
        if (REPO / name).exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)


def asv(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asv", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
