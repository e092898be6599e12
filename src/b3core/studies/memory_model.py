"""The memory model M(B) = fixed + per_sample * B: fitted from measured peaks, checked against
the analytic size of parameters, gradients and optimizer state, and used to predict B_max."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

# Extra fp32 tensors per parameter that each optimizer keeps (Adam: two moments; SGD: momentum).
OPTIMIZER_STATES = {"adam": 2, "sgd": 1}
FP32_BYTES = 4
# A prediction past this multiple of the largest batch measured is an extrapolation the fit
# cannot vouch for (activation memory is linear only for the sizes measured): b3 says so.
EXTRAPOLATION_LIMIT = 4.0


@dataclass(frozen=True)
class MemoryFit:
    fixed_bytes: float
    per_sample_bytes: float
    r_squared: float
    batch_sizes: tuple[int, ...]
    peak_bytes: tuple[int, ...]

    def predict(self, batch_size: int) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size

    def max_batch_for(self, budget_bytes: int) -> int:
        """Largest B with predicted M(B) within the budget (0 if not even one sample fits)."""
        if self.per_sample_bytes <= 0:
            raise ValueError("the fit found no per-sample memory: measure wider batch sizes")
        return max(0, math.floor((budget_bytes - self.fixed_bytes) / self.per_sample_bytes))

    @property
    def residuals(self) -> tuple[float, ...]:
        """Measured minus fitted peak, in bytes, at each size."""
        return tuple(p - self.predict(b) for b, p in zip(self.batch_sizes, self.peak_bytes))

    def residual_share(self, batch_size: int, peak_bytes: int) -> float:
        """A measured peak's distance from the line, as a share of that peak."""
        return (peak_bytes - self.predict(batch_size)) / peak_bytes

    @property
    def max_residual_share(self) -> float:
        """The largest residual (of the sizes fitted) as a share of its measured peak."""
        shares = [
            abs(self.residual_share(b, p)) for b, p in zip(self.batch_sizes, self.peak_bytes) if p
        ]
        return max(shares, default=0.0)

    def extrapolation_note(self, batch_size: int) -> str | None:
        """A warning when batch_size lies past EXTRAPOLATION_LIMIT x the largest size measured."""
        largest = max(self.batch_sizes)
        if batch_size <= EXTRAPOLATION_LIMIT * largest:
            return None
        return (
            f"extrapolated {batch_size / largest:.0f}x past the largest batch measured "
            f"({largest}; the fit vouches for {EXTRAPOLATION_LIMIT:g}x): run find-max-batch, "
            "or fit on larger sizes"
        )

    def to_dict(self) -> dict:
        return {
            **self.__dict__,
            "residual_bytes": list(self.residuals),
            "max_residual_share": self.max_residual_share,
        }


def fit_memory(batch_sizes: Sequence[int], peak_bytes: Sequence[int]) -> MemoryFit:
    """Least-squares line through (batch size, peak bytes); needs at least two distinct sizes."""
    if len(set(batch_sizes)) < 2:
        raise ValueError("a memory fit needs peaks at two or more batch sizes")
    line = sps.linregress(np.asarray(batch_sizes, float), np.asarray(peak_bytes, float))
    return MemoryFit(
        float(line.intercept),
        float(line.slope),
        float(line.rvalue**2),
        tuple(int(b) for b in batch_sizes),
        tuple(int(p) for p in peak_bytes),
    )


@dataclass(frozen=True)
class AnalyticMemory:
    """What training must hold whatever the batch: fp32 weights, their gradients, and the
    optimizer's state (mixed precision keeps fp32 master weights, so this does not shrink)."""

    parameters: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_state_bytes

    def to_dict(self) -> dict:
        return {**self.__dict__, "total_bytes": self.total_bytes}


def analytic_fixed_memory(parameters: int, optimizer: str = "adam") -> AnalyticMemory:
    """From the parameter count that every result records: no model is built here."""
    return AnalyticMemory(
        parameters=parameters,
        parameter_bytes=parameters * FP32_BYTES,
        gradient_bytes=parameters * FP32_BYTES,
        optimizer_state_bytes=parameters * FP32_BYTES * OPTIMIZER_STATES[optimizer],
    )


@dataclass(frozen=True)
class FittedMemory:
    """A fit of measured peaks, beside what weights, gradients and optimizer state must take."""

    fit: MemoryFit
    analytic: AnalyticMemory


def prediction_error(predicted: int, actual: int) -> float:
    """Relative error of a predicted B_max against the measured one (+ means over-predicted)."""
    return (predicted - actual) / actual if actual else float("nan")
