"""`b3 find-max-batch`: the exact largest batch whose full training steps run without OOM.

The batch grows exponentially until a probe fails, then bisects between the last success and
the first failure. Each probe runs at least two full steps, so Adam's state exists, and can run
in a fresh process (`isolate`), which avoids allocator fragmentation from earlier probes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from b3core.errors import B3Error, StepOutOfMemory
from b3core.measuring.isolation import measure_maybe_isolated
from b3core.measuring.result import StepResult
from b3core.spec.step import MIN_WARMUP, StepSpec, Timing
from b3core.studies.memory_model import FittedMemory, analytic_fixed_memory, fit_memory

DEFAULT_SAFETY_MARGIN = 0.10


@dataclass(frozen=True)
class Probe:
    batch_size: int
    fits: bool
    peak_bytes: int | None
    reason: str
    seconds: float


@dataclass
class FindMaxResult:
    spec: StepSpec
    memory_budget: int | None
    probes: list[Probe] = field(default_factory=list)
    max_batch: int = 0
    hit_limit: bool = False
    safety_margin: float = DEFAULT_SAFETY_MARGIN

    @property
    def recommended(self) -> int:
        """The largest batch with a safety margin: the edge moves with fragmentation, other
        processes on the device, and library versions."""
        return (
            max(1, math.floor(self.max_batch * (1 - self.safety_margin))) if self.max_batch else 0
        )

    def to_dict(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "memory_budget": self.memory_budget,
            "max_batch": self.max_batch,
            "recommended": self.recommended,
            "safety_margin": self.safety_margin,
            "hit_limit": self.hit_limit,
            "probes": [p.__dict__ for p in self.probes],
        }


def training_probe(
    spec: StepSpec,
    batch: int,
    *,
    isolate: bool,
    memory_budget: int | None,
    steps: int = MIN_WARMUP,
    nproc_per_node: int | None = None,
) -> StepResult:
    """`steps` full training steps and one more at `batch`, with their peak memory;
    StepOutOfMemory if they do not fit. With nproc_per_node, a fresh data-parallel world per
    probe: the batch fits only if it fits on every rank, and the peak is the largest rank's."""
    return measure_maybe_isolated(
        spec.replace(batch_size=batch, mode="train"),
        Timing(repeats=1, warmup=steps, clock="per-step"),
        isolate=isolate,
        memory_budget=memory_budget,
        nproc_per_node=nproc_per_node,
    )


def find_max_batch(
    spec: StepSpec,
    *,
    memory_budget: int | None = None,
    start: int = 1,
    limit: int = 65536,
    isolate: bool = False,
    steps: int = MIN_WARMUP,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    on_probe: Callable[[Probe], None] | None = None,
    nproc_per_node: int | None = None,
) -> FindMaxResult:
    if start < 1 or limit < start:
        raise B3Error(f"need 1 <= start <= limit, got start {start} and limit {limit}")
    if not 0 <= safety_margin < 1:
        raise B3Error(f"safety margin must be in [0, 1), got {safety_margin}")
    result = FindMaxResult(spec.replace(mode="train"), memory_budget, safety_margin=safety_margin)
    known: dict[int, bool] = {}

    def fits(batch: int) -> bool:
        if batch in known:
            return known[batch]
        began = time.perf_counter()
        try:
            peak = training_probe(
                result.spec,
                batch,
                isolate=isolate,
                memory_budget=memory_budget,
                steps=steps,
                nproc_per_node=nproc_per_node,
            ).memory.peak_bytes
            probe = Probe(batch, True, peak, "", time.perf_counter() - began)
        except StepOutOfMemory as oom:
            probe = Probe(batch, False, None, oom.reason, time.perf_counter() - began)
        result.probes.append(probe)
        if on_probe:
            on_probe(probe)
        known[batch] = probe.fits
        return probe.fits

    # Grow: find a failing size above a fitting one (or shrink when even `start` fails).
    low, high = 0, None
    batch = start
    if fits(batch):
        low = batch
        while batch < limit:
            batch = min(batch * 2, limit)
            if not fits(batch):
                high = batch
                break
            low = batch
        if high is None:
            result.max_batch, result.hit_limit = low, True
            return result
    else:
        high = batch
        while batch > 1:
            batch //= 2
            if fits(batch):
                low = batch
                break
            high = batch
        if low == 0:
            return result  # not even batch 1 fits
    # Bisect: low fits, high does not.
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    result.max_batch = low
    return result


def fit_memory_model(
    spec: StepSpec,
    batch_sizes,
    *,
    memory_budget: int | None,
    isolate: bool = False,
    nproc_per_node: int | None = None,
) -> FittedMemory | None:
    """Peak memory of full training steps at a few sizes, and the line through them. Sizes that
    do not fit are left out; None when fewer than two fit."""

    def probe_or_none(size: int) -> StepResult | None:
        try:
            return training_probe(
                spec,
                size,
                isolate=isolate,
                memory_budget=memory_budget,
                nproc_per_node=nproc_per_node,
            )
        except StepOutOfMemory:
            return None

    if not isolate and not nproc_per_node:
        # The first configuration in a process also pays one-time costs (kernel caches, thread
        # pools) that no later batch size pays again: spend them on a discarded run.
        probe_or_none(min(batch_sizes))
    probes = [(size, probe) for size in batch_sizes if (probe := probe_or_none(size)) is not None]
    if len({size for size, _ in probes}) < 2:
        return None
    fit = fit_memory([size for size, _ in probes], [p.memory.peak_bytes for _, p in probes])
    parameters = probes[0][1].workload.parameters
    return FittedMemory(fit, analytic_fixed_memory(parameters, spec.optimizer))
