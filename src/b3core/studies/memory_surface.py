"""The memory surface of a sequence model, M(B, L) = a + b·B·L + c·B·L², fitted by least squares
to measured peaks, each term with its 95% interval.

a is what training holds whatever the batch (weights, gradients, optimizer state); b·B·L is what
every token's activations take; c·B·L² is the attention matrix that an unfused kernel keeps for
the backward pass. A fused kernel never stores it, and c is then indistinguishable from zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from b3core.errors import B3Error, StepOutOfMemory
from b3core.spec.step import StepSpec
from b3core.studies.finder import training_probe

MIN_PROBES = 4  # three terms and at least one degree of freedom for their intervals
MISS = 0.05  # a probe this far off the surface (a share of its peak) is said to bend the fit
TERMS = ("fixed", "per_token", "per_token_pair")
TERM_FORMS = {"fixed": "a", "per_token": "b·B·L", "per_token_pair": "c·B·L²"}


def design(points: Sequence[tuple[int, int]]) -> np.ndarray:
    """The columns 1, B·L and B·L² at each (B, L)."""
    return np.array([(1.0, b * length, b * length * length) for b, length in points])


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float  # per unit of its column: bytes, bytes per token, bytes per token·length
    low: float
    high: float

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0 <= self.high

    def to_dict(self) -> dict:
        return {"name": self.name, "form": TERM_FORMS[self.name], **self.__dict__}


@dataclass(frozen=True)
class MemorySurface:
    terms: tuple[Term, Term, Term]
    points: tuple[tuple[int, int], ...]  # (batch size, sequence length) of each probe
    peak_bytes: tuple[int, ...]

    def coefficient(self, name: str) -> float:
        return next(t.bytes for t in self.terms if t.name == name)

    def predict(self, batch_size: int, seq_len: int) -> float:
        return float(design([(batch_size, seq_len)])[0] @ [t.bytes for t in self.terms])

    def max_batch_for(self, budget_bytes: int, seq_len: int) -> int:
        """The largest B whose predicted peak at length L is within the budget (0: none)."""
        per_sequence = self.predict(1, seq_len) - self.coefficient("fixed")
        if per_sequence <= 0:
            raise ValueError("the fit found no per-sequence memory: probe larger batches")
        return max(0, math.floor((budget_bytes - self.coefficient("fixed")) / per_sequence))

    def residual_shares(self) -> list[float]:
        """Measured minus fitted peak at each probe, as a share of the measured peak."""
        return [(p - self.predict(*pt)) / p for pt, p in zip(self.points, self.peak_bytes)]

    @property
    def max_residual_share(self) -> float:
        return max(abs(share) for share in self.residual_shares())

    @property
    def misses_a_probe(self) -> bool:
        return self.max_residual_share > MISS

    @property
    def attention_vanishes(self) -> bool:
        """The B·L² term's interval includes zero: no attention matrix is kept that the probes
        could see."""
        return self.terms[2].includes_zero

    def attention_share(self, batch_size: int, seq_len: int, *, bound: str = "bytes") -> float:
        """The B·L² term's share of the predicted peak at (B, L), at its estimate or at one end
        of its interval (bound "low" or "high")."""
        c = getattr(self.terms[2], bound)
        return c * batch_size * seq_len**2 / self.predict(batch_size, seq_len)

    def to_dict(self) -> dict:
        return {
            "model": "M(B, L) = a + b·B·L + c·B·L²",
            "terms": [t.to_dict() for t in self.terms],
            "points": [list(p) for p in self.points],
            "peak_bytes": list(self.peak_bytes),
            "residual_shares": self.residual_shares(),
            "misses_a_probe": self.misses_a_probe,
            "attention_vanishes": self.attention_vanishes,
        }


def fit_memory_surface(
    points: Sequence[tuple[int, int]], peak_bytes: Sequence[int]
) -> MemorySurface:
    """Ordinary least squares with 95% t intervals on (1, B·L, B·L²). Needs MIN_PROBES probes
    at two lengths or more (else B·L and B·L² cannot be told apart)."""
    if len(points) < MIN_PROBES:
        raise ValueError(f"a memory surface needs {MIN_PROBES} probes or more, got {len(points)}")
    if len({length for _, length in points}) < 2:
        raise ValueError("a memory surface needs probes at two sequence lengths or more")
    x, y = design(points), np.asarray(peak_bytes, float)
    scale = np.abs(x).max(axis=0)  # the columns span ten orders of magnitude: solve them scaled
    scaled = x / scale
    solution, *_ = np.linalg.lstsq(scaled, y, rcond=None)
    dof = len(y) - x.shape[1]
    residuals = y - scaled @ solution
    variance = residuals @ residuals / dof if dof > 0 else 0.0
    covariance = variance * np.linalg.pinv(scaled.T @ scaled)
    half = sps.t.ppf(0.975, dof) * np.sqrt(np.diag(covariance)) if dof > 0 else np.full(3, np.inf)
    coefficients, halves = solution / scale, half / scale
    terms = tuple(
        Term(name, float(c), float(c - h), float(c + h))
        for name, c, h in zip(TERMS, coefficients, halves)
    )
    return MemorySurface(terms, tuple(map(tuple, points)), tuple(int(p) for p in peak_bytes))


@dataclass(frozen=True)
class MeasuredSurface:
    surface: MemorySurface
    out_of_memory: tuple[tuple[int, int], ...]  # probes left out: they did not fit


def measure_memory_surface(
    spec: StepSpec,
    batch_sizes: Sequence[int],
    seq_lens: Sequence[int],
    *,
    isolate: bool = False,
    memory_budget: int | None = None,
    on_probe=None,
) -> MeasuredSurface:
    """The peak of full training steps at every (B, L) of the grid, and the surface through
    them; probes that do not fit are left out of the fit and listed."""
    points, peaks, missed = [], [], []
    if not isolate:  # one-time costs of the first configuration in a process (see finder)
        try:
            training_probe(
                spec.replace(seq_len=min(seq_lens)),
                min(batch_sizes),
                isolate=False,
                memory_budget=memory_budget,
            )
        except StepOutOfMemory:
            pass
    for seq_len in seq_lens:
        for batch in batch_sizes:
            try:
                probe = training_probe(
                    spec.replace(seq_len=seq_len),
                    batch,
                    isolate=isolate,
                    memory_budget=memory_budget,
                )
            except StepOutOfMemory:
                missed.append((batch, seq_len))
                continue
            points.append((batch, seq_len))
            peaks.append(probe.memory.peak_bytes)
            if on_probe is not None:
                on_probe(batch, seq_len, probe.memory.peak_bytes)
    try:
        surface = fit_memory_surface(points, peaks)
    except ValueError as exc:
        raise B3Error(f"{exc} that fit in memory; try smaller batches or lengths") from None
    return MeasuredSurface(surface, tuple(missed))
