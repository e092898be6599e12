"""The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training"): B_simple = tr(Sigma) / |G|^2, the batch size above which a larger batch stops
paying for itself in fewer steps (the critical batch, roughly).

It is estimated from two batch sizes that a step with accumulation already has: each
micro-batch's gradient (B_small) and the accumulated window's (B_big = k * B_small). With
E|G_B|^2 = |G|^2 + tr(Sigma) / B, the unbiased estimators are

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Each is noisy; B_simple is the ratio of their bias-corrected moving averages, not a moving
average of ratios. Norms are taken in fp32, unscaled by GradScaler; a step with a non-finite
gradient is skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from b3core.workloads.devices import synchronize

DEFAULT_DECAY = 0.95  # of the moving averages: about the last 20 measured steps


def unbiased_estimates(
    small_sq: float, big_sq: float, b_small: float, b_big: float
) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from the mean squared norm of B_small-sample gradients and the squared
    norm of a B_big-sample gradient."""
    if not b_big > b_small > 0:
        raise ValueError(f"need B_big > B_small > 0, got {b_big} and {b_small}")
    g_squared = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    return g_squared, trace


@dataclass
class NoiseScale:
    """Bias-corrected exponential moving averages of |G|^2 and tr(Sigma), and their ratio."""

    decay: float = DEFAULT_DECAY
    steps: int = 0
    _g_squared: float = 0.0
    _trace: float = 0.0
    history: list[tuple[int, float | None]] = field(default_factory=list)

    def update(self, small_sq: float, big_sq: float, b_small: float, b_big: float) -> None:
        g_squared, trace = unbiased_estimates(small_sq, big_sq, b_small, b_big)
        if not (math.isfinite(g_squared) and math.isfinite(trace)):
            return
        self.steps += 1
        self._g_squared = self.decay * self._g_squared + (1 - self.decay) * g_squared
        self._trace = self.decay * self._trace + (1 - self.decay) * trace
        self.history.append((self.steps, self.b_simple))

    def _corrected(self, average: float) -> float:
        return average / (1 - self.decay**self.steps)

    @property
    def b_simple(self) -> float | None:
        """The current estimate; None before any step, or while |G|^2 is not yet positive."""
        if not self.steps:
            return None
        g_squared = self._corrected(self._g_squared)
        return self._corrected(self._trace) / g_squared if g_squared > 0 else None


class GradientProbe:
    """train_step's `after_backward` hook: the squared norm of each micro-batch's own gradient
    (the accumulated gradient's growth over that micro-batch, divided by its weight) and, after
    the last, of the window's. Call `window()` after the step for (mean small, big) squared
    norms, or None for a window with a non-finite gradient. Its time is kept in `seconds`
    (device synced), for a clock that must leave it out."""

    def __init__(self, params: Iterable[torch.nn.Parameter], scaler=None):
        self.params = [p for p in params if p.requires_grad]
        self.scaler = scaler
        self.seconds = 0.0
        self._reset()

    def _reset(self) -> None:
        self._previous: torch.Tensor | None = None
        self._small: list[float] = []
        self._finite = True

    def _flat(self) -> torch.Tensor:
        grads = [p.grad.detach().float().flatten() for p in self.params if p.grad is not None]
        flat = torch.cat(grads)
        if self.scaler is not None and self.scaler.is_enabled():
            flat = flat / self.scaler.get_scale()
        return flat

    def __call__(self, index: int, weight: float) -> None:
        device = self.params[0].device
        synchronize(device)
        began = time.perf_counter()
        flat = self._flat()
        piece = flat if self._previous is None else flat - self._previous
        small = float(piece.square().sum()) / weight**2
        self._finite &= math.isfinite(small)
        self._small.append(small)
        self._previous = flat
        synchronize(device)
        self.seconds += time.perf_counter() - began

    def window(self) -> tuple[float, float] | None:
        """(mean squared norm of the micro-batch gradients, squared norm of the window's)."""
        flat, small, finite = self._previous, self._small, self._finite
        self._reset()
        if flat is None or len(small) < 2:
            return None
        big = float(flat.square().sum())
        if not (finite and math.isfinite(big)):
            return None
        return sum(small) / len(small), big
