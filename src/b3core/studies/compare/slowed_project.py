"""A throwaway user project for checking that `b3 compare` sees a slowdown, and only a real one.

It is a git repository holding one module, `b3_slowed` (in src/), whose model factory
`b3_slowed:build` wraps one of b3's models. Its BASE commit is that model as it is; its HEAD
commit adds EXTRA_OPS extra tensor operations (matrix products) to every forward pass: device
work, not a sleep, so that on a GPU the slowdown is queued like the model's own kernels. b3
compares the two commits through `--model b3_slowed:build`, as it compares a user's own.

`calibrate` finds how many extra operations make the step slower by a given fraction, and
measures the slowdown they make in one process (no process effect): the figure that the
comparisons' estimates are checked against.
"""

from __future__ import annotations

import importlib
import math
import statistics
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MODULE = "b3_slowed"
FACTORY = f"{MODULE}:build"
CALIBRATION_ROUNDS = 5
CALIBRATION_TOLERANCE = 0.1  # the slowdown found lies within 10% of the one asked for

SOURCE = '''"""A user's model for checking `b3 compare`: b3's {model}, plus EXTRA_OPS extra
products of a {ballast}x{ballast} matrix in every forward pass (device work: HEAD's change)."""

import torch
from torch import nn

from b3core import create_model

EXTRA_OPS = {extra_ops}


class Slowed(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.register_buffer("ballast", torch.randn({ballast}, {ballast}) / {ballast} ** 0.5)

    def forward(self, x):
        with torch.no_grad():
            y = self.ballast
            for _ in range(EXTRA_OPS):
                y = torch.tanh(y @ self.ballast)
        return self.inner(x)


def build(num_classes: int = {num_classes}, image_size: int = {image_size}) -> nn.Module:
    return Slowed(create_model({model!r}, num_classes=num_classes, image_size=image_size))
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _write(dest: Path, extra_ops: int, **model) -> None:
    (dest / "src").mkdir(parents=True, exist_ok=True)
    (dest / "src" / f"{MODULE}.py").write_text(SOURCE.format(extra_ops=extra_ops, **model))


def slowed_project(
    dest: Path,
    extra_ops: int,
    *,
    model: str = "simple_cnn",
    image_size: int = 32,
    num_classes: int = 10,
    ballast: int = 128,
) -> Path:
    """The repository at dest: HEAD~1 is the plain model, HEAD adds `extra_ops` operations.
    Compare `HEAD~1 HEAD` (a slowdown) or `HEAD HEAD` (none). With no extra operations, the
    plain model is HEAD, for `commit_change` to build on."""
    dest = Path(dest)
    shape = {"model": model, "image_size": image_size, "num_classes": num_classes}
    _write(dest, 0, ballast=ballast, **shape)
    git(dest, "init", "--quiet")
    for key, value in (("user.name", "b3"), ("user.email", "b3@localhost")):
        git(dest, "config", key, value)
    git(dest, "add", "-A")
    git(dest, "commit", "--quiet", "-m", f"base: {model}")
    if extra_ops:
        _write(dest, extra_ops, ballast=ballast, **shape)
        git(dest, "commit", "--quiet", "-am", f"head: {extra_ops} extra operations a forward pass")
    return dest


def commit_change(repo: Path, old: str, new: str, message: str) -> None:
    """A new HEAD whose model module has `old` replaced by `new` (a failing forward, say)."""
    path = Path(repo) / "src" / f"{MODULE}.py"
    source = path.read_text()
    if old not in source:
        raise ValueError(f"{path} holds no {old!r}")
    path.write_text(source.replace(old, new))
    git(Path(repo), "commit", "--quiet", "-am", message)


FORWARD = "    def forward(self, x):\n"  # where a change to every forward pass goes


@contextmanager
def _importable(src: Path):
    sys.path.insert(0, str(src))
    try:
        yield importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(src))
        sys.modules.pop(MODULE, None)


@dataclass(frozen=True)
class Calibration:
    extra_ops: int
    ratio: float  # the slowed step over the plain one, in one process
    ci95: tuple[float, float]
    step_s: float  # the plain step

    def to_dict(self) -> dict:
        return {**self.__dict__, "ci95": list(self.ci95)}


def calibrate(spec, slowdown: float, project: Path, pairs: int = 30) -> Calibration:
    """How many extra operations make `spec`'s step (its model: FACTORY) slower by `slowdown`
    (within CALIBRATION_TOLERANCE, in at most CALIBRATION_ROUNDS tries of `pairs` pairs), and
    the slowdown they make, measured in one process: the plain and the slowed step alternate,
    in a balanced order, on the same built model, weights and memory. The figure returned is
    the last try's."""
    import numpy as np
    from scipy import stats

    from b3core.measuring.clocks import time_block
    from b3core.measuring.runner import prepare

    with _importable(project / "src") as module:
        ready = prepare(spec, warmup=5)

        def block(extra_ops: int) -> float:
            module.EXTRA_OPS = extra_ops
            return statistics.median(time_block(ready.call, ready.device) for _ in range(5))

        def ratio(extra_ops: int, n: int) -> list[float]:
            out = []
            for i in range(n):
                first, second = (0, extra_ops) if i % 2 == 0 else (extra_ops, 0)
                times = {first: block(first), second: block(second)}
                out.append(times[extra_ops] / times[0])
            return out

        def mean_slowdown(extra_ops: int, n: int) -> tuple[list[float], float]:
            found = ratio(extra_ops, n)
            return found, float(np.exp(np.mean(np.log(found)))) - 1

        step_s = block(0)
        _, rough = mean_slowdown(100, 6)  # the operations' cost, roughly
        extra = max(1, round(100 * slowdown / max(rough, 1e-4)))
        for attempt in range(CALIBRATION_ROUNDS):
            found, measured = mean_slowdown(extra, pairs)
            close = abs(measured - slowdown) <= CALIBRATION_TOLERANCE * slowdown
            if close or attempt == CALIBRATION_ROUNDS - 1:
                break
            extra = max(1, round(extra * slowdown / max(measured, 1e-4)))
        module.EXTRA_OPS = 0
    logs = np.log(found)  # the same scale as compare's estimate: exp(mean log ratio)
    interval = stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    ci95 = (math.exp(interval.low), math.exp(interval.high))
    return Calibration(extra, math.exp(float(logs.mean())), ci95, step_s)
