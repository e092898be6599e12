"""How b3 checks that `b3 compare` sees a slowdown: a throwaway git repository holding b3's own
source, whose BASE commit is b3 as it is and whose HEAD commit makes every training step
slower by a given fraction. The benchmark of compare's power and its tests build on it.

The slowdown is a busy wait after each training step, proportional to that step's own time
(on a CPU, where the step has finished when it returns; a GPU's step would need a sync).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import b3core
from b3core.studies.compare.sides import git

TRAINING = Path("src/b3core/workloads/training.py")
STEP_CALL = """        return train_step(
            self.model,
            self.optimizer,
            micro_batches,
            loss_fn=self.loss_fn,
            autocast=self.autocast,
            scaler=self.scaler,
            no_sync=self.no_sync,
            after_backward=self.after_backward,
        )
"""
SLOWED_STEP_CALL = (
    "        began = _time.perf_counter()\n"
    + STEP_CALL.replace("return train_step(", "loss = train_step(")
    + """        until = _time.perf_counter() + {fraction!r} * (_time.perf_counter() - began)
        while _time.perf_counter() < until:
            pass
        return loss
"""
)


def slowed_repository(dest: Path, fraction: float) -> Path:
    """A git repository at dest: commit 1 is this b3core's source, commit 2 (HEAD) slows the
    training step by `fraction` (0.05: 5%). Compare `HEAD~1 HEAD`, or `HEAD HEAD`."""
    dest = Path(dest)
    shutil.copytree(
        Path(b3core.__file__).parent,
        dest / "src" / "b3core",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    git(dest, "init", "--quiet")
    for key, value in (("user.name", "b3"), ("user.email", "b3@localhost")):
        git(dest, "config", key, value)
    git(dest, "add", "-A")
    git(dest, "commit", "--quiet", "-m", "base: b3 as it is")
    source = (dest / TRAINING).read_text()
    if STEP_CALL not in source:
        raise RuntimeError(f"{TRAINING} no longer holds the step call that the slowdown wraps")
    slowed = source.replace(STEP_CALL, SLOWED_STEP_CALL.format(fraction=fraction))
    future = "from __future__ import annotations\n"
    (dest / TRAINING).write_text(slowed.replace(future, future + "import time as _time\n", 1))
    git(dest, "commit", "--quiet", "-am", f"head: the training step {fraction:.0%} slower")
    return dest
