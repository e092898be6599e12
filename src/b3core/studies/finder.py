"""`b3 find-max-batch`: the exact largest batch whose full training steps run without OOM.

The guided search (the default) measures two sizes, fits the memory model M(B) = a + b*B on
them, probes half the predicted edge to refit on a size that matters, then probes the
prediction and steps to the exact edge: about five probes when memory is linear in the batch.
Each later prediction refits on the largest sizes that fit. When a prediction misses, or no
fit can be made, it gallops from the miss and bisects, and says so. The bisecting search
(`search="bisect"`) doubles from `start` until a probe fails, then bisects.

Either way the result is exact: the batch reported fit, and the next one did not, under the
same budget. Each probe runs at least two full steps, so Adam's state exists, and can run in a
fresh process (`isolate`), which avoids allocator fragmentation from earlier probes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from b3core.errors import StepOutOfMemory
from b3core.measuring.isolation import measure_maybe_isolated
from b3core.measuring.result import StepResult
from b3core.spec.finder import FinderSettings
from b3core.spec.step import MIN_WARMUP, StepSpec, Timing
from b3core.studies.memory_model import (
    EXTRAPOLATION_LIMIT,
    FittedMemory,
    MemoryFit,
    analytic_fixed_memory,
    fit_memory,
    prediction_error,
)

# The guided search's second size, as a multiple of the first: far enough that the step's
# peak is past the optimizer's (at tiny batches the peak is Adam's update, flat in the batch).
FIRST_FIT_SPREAD = 32
FIT_POINTS = 2  # the memory model is fitted on the largest sizes that fit, this many


@dataclass(frozen=True)
class Probe:
    batch_size: int
    fits: bool
    peak_bytes: int | None
    reason: str
    seconds: float
    limit_bytes: int | None = None  # what the budget bounds (CUDA: reserved)
    phase: str = ""  # fit, predicted, step, double or bisect


@dataclass
class FindMaxResult:
    spec: StepSpec
    memory_budget: int | None
    probes: list[Probe] = field(default_factory=list)
    max_batch: int = 0
    hit_limit: bool = False
    safety_margin: float = FinderSettings.safety_margin
    search: str = FinderSettings.search
    first_fit: MemoryFit | None = None
    first_prediction: int | None = None
    notes: list[str] = field(default_factory=list)
    parameters: int | None = None  # the model's, from the probes

    @property
    def recommended(self) -> int:
        """The largest batch with a safety margin: the edge moves with fragmentation, other
        processes on the device, and library versions."""
        return (
            max(1, math.floor(self.max_batch * (1 - self.safety_margin))) if self.max_batch else 0
        )

    @property
    def slack_bytes(self) -> int:
        """The allocator's smallest slack (reserved - allocated) at any probe that fit: what it
        keeps even when it frees its cache at a cap. 0 where nothing is reserved (CPU)."""
        return min((p.limit_bytes - p.peak_bytes for p in self.probes if p.fits), default=0)

    @property
    def prediction_error(self) -> float | None:
        """The first fit's predicted edge against the found one (+: over-predicted)."""
        if self.first_prediction is None or not self.max_batch or self.hit_limit:
            return None
        return prediction_error(self.first_prediction, self.max_batch)

    @property
    def residuals(self) -> dict[int, float]:
        """Every probe that fit: its measured peak minus the first fit's line, as a share of
        the peak (the line is fitted on two sizes; the others show how far it holds)."""
        if self.first_fit is None:
            return {}
        return {
            p.batch_size: self.first_fit.residual_share(p.batch_size, p.peak_bytes)
            for p in self.probes
            if p.fits and p.peak_bytes
        }

    def to_dict(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "memory_budget": self.memory_budget,
            "search": self.search,
            "first_fit_residual_shares": self.residuals,
            "slack_bytes": self.slack_bytes,
            "max_batch": self.max_batch,
            "recommended": self.recommended,
            "safety_margin": self.safety_margin,
            "hit_limit": self.hit_limit,
            "probes": [p.__dict__ for p in self.probes],
            "predicted_max_batch": self.first_prediction,
            "prediction_error": self.prediction_error,
            "first_fit": self.first_fit.to_dict() if self.first_fit else None,
            "notes": self.notes,
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
        Timing(repeats=1, warmup=steps, clock="per-step", telemetry=False, flops=False),
        isolate=isolate,
        memory_budget=memory_budget,
        nproc_per_node=nproc_per_node,
    )


def find_max_batch(
    spec: StepSpec,
    *,
    memory_budget: int | None = None,
    steps: int = MIN_WARMUP,
    on_probe: Callable[[Probe], None] | None = None,
    nproc_per_node: int | None = None,
    capacity_bytes: int | None = None,
    **settings,
) -> FindMaxResult:
    """`settings`: FinderSettings' fields (start, limit, safety_margin, search, isolate).
    `capacity_bytes`: the device's memory (CUDA), which the guided search predicts against
    when no budget is given, less what the device holds outside torch's allocator."""
    found = FinderSettings(**settings)
    start, limit, isolate = found.start, found.limit, found.isolate
    result = FindMaxResult(
        spec.replace(mode="train"),
        memory_budget,
        safety_margin=found.safety_margin,
        search=found.search,
    )

    def probe(batch: int):
        return training_probe(
            result.spec,
            batch,
            isolate=isolate,
            memory_budget=memory_budget,
            steps=steps,
            nproc_per_node=nproc_per_node,
        )

    state = _Search(result, probe, limit, on_probe, capacity_bytes)
    if found.search == "guided":
        state.guided(start)
    else:
        state.double_and_bisect(start)
    state.finish()
    return result


class _Search:
    """What both searches share: every size probed once, the largest size known to fit (low)
    and the smallest known not to (high)."""

    def __init__(self, result: FindMaxResult, probe, limit: int, on_probe, capacity_bytes):
        self.result, self.probe, self.limit, self.on_probe = result, probe, limit, on_probe
        self.capacity_bytes = capacity_bytes
        self.outside_torch_bytes = 0
        self.known: dict[int, Probe] = {}
        self.low, self.high = 0, None

    def fits(self, batch: int, phase: str) -> bool:
        if batch not in self.known:
            began = time.perf_counter()
            try:
                measured = self.probe(batch)
                memory = measured.memory
                if measured.workload:
                    self.result.parameters = measured.workload.parameters
                probe = Probe(
                    batch, True, memory.peak_bytes, "", time.perf_counter() - began,
                    memory.limit_bytes, phase,
                )  # fmt: skip
                self.outside_torch_bytes = max(
                    self.outside_torch_bytes, memory.outside_torch_bytes or 0
                )
            except StepOutOfMemory as oom:
                seconds = time.perf_counter() - began
                probe = Probe(batch, False, None, oom.reason, seconds, None, phase)
            self.known[batch] = probe
            self.result.probes.append(probe)
            if self.on_probe:
                self.on_probe(probe)
        if self.known[batch].fits:
            self.low = max(self.low, batch)
        elif self.high is None or batch < self.high:
            self.high = batch
        return self.known[batch].fits

    def finish(self) -> None:
        self.result.max_batch = self.low
        self.result.hit_limit = self.high is None and self.low == self.limit

    def bracketed(self) -> bool:
        return self.high is not None and self.high - self.low <= 1

    # -- the bisecting search, and the guided search's fallback

    def double_and_bisect(self, start: int) -> None:
        batch = start
        if self.fits(batch, "double"):
            while batch < self.limit and self.high is None:
                batch = min(batch * 2, self.limit)
                self.fits(batch, "double")
        else:
            while batch > 1 and self.low == 0:
                batch //= 2
                self.fits(batch, "double")
        self.bisect()

    def bisect(self) -> None:
        if self.low and self.high is not None:
            while not self.bracketed():
                self.fits((self.low + self.high) // 2, "bisect")

    def fallback(self, why: str, start: int) -> None:
        self.result.notes.append(f"{why}: doubling and bisection instead")
        self.double_and_bisect(self.low or start)

    # -- the guided search

    def budget(self) -> int | None:
        """What the fit predicts against: the budget (on CUDA a cap on the allocator's
        reserved memory), else the device's capacity less what it holds outside torch (the
        CUDA context, other processes); less the allocator's slack (reserved - allocated) at
        its smallest seen, which the allocator keeps even when it frees its cache at the cap."""
        total = self.result.memory_budget
        if not total and self.capacity_bytes:
            total = self.capacity_bytes - self.outside_torch_bytes
        if not total:
            return None
        return total - self.result.slack_bytes

    def fit(self) -> MemoryFit | None:
        """The memory model on the largest sizes that fit (the sizes that matter), fitted to the
        tensors' peak: on CUDA the reserved peak is not linear in the batch (the caching
        allocator keeps freed blocks, and gives them back when a cap is near)."""
        sizes = sorted(b for b, p in self.known.items() if p.fits)[-FIT_POINTS:]
        if len(sizes) < 2:
            return None
        fit = fit_memory(sizes, [self.known[b].peak_bytes for b in sizes])
        return fit if fit.per_sample_bytes > 0 else None

    def predict(self, *, within_reach: bool = True) -> int | None:
        """The fit's largest batch for the budget; within_reach: no further than
        EXTRAPOLATION_LIMIT x the largest size measured (a prediction to be probed)."""
        fit, budget = self.fit(), self.budget()
        if fit is None or budget is None:
            return None
        prediction = min(self.limit, fit.max_batch_for(budget))
        reach = int(max(fit.batch_sizes) * EXTRAPOLATION_LIMIT)
        if within_reach and prediction > reach:
            self.result.notes.append(
                f"the memory model's {prediction} is over {EXTRAPOLATION_LIMIT:g}x the largest "
                f"size measured ({max(fit.batch_sizes)}): probing {reach} on the way"
            )
            return reach
        return prediction

    def guided(self, start: int) -> None:
        """Two sizes, a rough prediction, half of it (a size that matters), the first fit's
        prediction, then the edge."""
        result = self.result
        second = min(self.limit, start * FIRST_FIT_SPREAD)
        if not self.fits(start, "fit") or second == start or not self.fits(second, "fit"):
            return self.fallback("the first two sizes did not both fit", start)
        rough = self.predict(within_reach=False)
        if rough is None:
            return self.fallback(
                "no memory model to follow (no budget, or no growth per sample)", start
            )
        if rough // 2 > second:
            self.fits(rough // 2, "fit")
        result.first_fit = self.fit()
        result.first_prediction = self.predict(within_reach=False)
        self.step_to_edge(self.predict())

    def step_to_edge(self, prediction: int) -> None:
        """Probe the prediction, and while it fits and a refit on it predicts further, jump
        there. Then the size next to the last one probed settles the edge; at a miss, gallop
        away from it (1, 2, 4, ... sizes) until the edge is bracketed, and bisect what is left."""
        batch = self.clamp(prediction)
        while batch is not None and self.fits(batch, "predicted"):
            refit = self.predict()
            if refit is None or refit <= batch + 1:
                break
            batch = self.clamp(refit)
        gap = 1
        if batch is not None and not self.known[batch].fits:
            self.miss(f"{batch} did not fit")
            while not self.bracketed():
                if self.fits(max(self.low + 1, self.high - gap), "step"):
                    break
                gap *= 2
        elif batch is not None:
            while not self.bracketed() and self.low < self.limit:
                ceiling = self.limit if self.high is None else self.high - 1
                if not self.fits(min(self.low + gap, ceiling), "step"):
                    break
                self.miss(f"{self.low} fit too")
                gap *= 2
        self.bisect()

    def clamp(self, batch: int) -> int | None:
        """batch within what is not yet known: above low, below high (None: nothing is left)."""
        ceiling = self.limit if self.high is None else self.high - 1
        return min(max(batch, self.low + 1), ceiling) if self.low < ceiling else None

    def miss(self, what: str) -> None:
        note = "the memory model's prediction missed"
        if not any(n.startswith(note) for n in self.result.notes):
            self.result.notes.append(f"{note} ({what}): galloping from it, then bisection")


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
