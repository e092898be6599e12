"""The one runner: every harness (the CLI, sweeps, fresh-process isolation, pytest, asv and
`b3 run`) builds, warms, times and tracks memory through here, and survives out-of-memory here.

`run_guarded(spec, body)` builds the spec's step on its device (made the current device), warms
it, and hands the ready step to `body`, which times it with b3's clocks or an outside timer.
`measure(spec, timing)` is run_guarded with b3's own clocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from b3core.errors import B3Error, StepOutOfMemory
from b3core.measuring import distributed
from b3core.measuring.clocks import block_steps_for, time_block
from b3core.measuring.flops import count_step_flops
from b3core.measuring.machine import device_name
from b3core.measuring.memory import MemoryBudget, PeakMemoryTracker, release_memory
from b3core.measuring.peaks import device_peak
from b3core.measuring.phases import time_phases
from b3core.measuring.protocol import is_out_of_memory
from b3core.measuring.result import DistributedInfo, PeakMemory, StepResult, Warmup
from b3core.measuring.stats import Measurement
from b3core.measuring.telemetry import TelemetrySampler, require_throttle_readings
from b3core.spec.step import MIN_WARMUP, StepSpec, Timing
from b3core.workloads.build import ResolvedStep, Workload, build_workload, resolve
from b3core.workloads.devices import device_context
from b3core.workloads.info import WorkloadInfo
from b3core.workloads.user_code import TRACEBACK_HINT, first_line

T = TypeVar("T")
# fp16's GradScaler starts at 2**16 and halves on each overflow; this many steps is far more
# than it needs to settle, and a step that never settles is reported, not timed as if it had.
MAX_WARMUP_STEPS = 100
STEPS_AFTER_PROFILER = 2


@dataclass
class ReadyStep:
    """A built step after its warm-up, on its device."""

    workload: Workload
    device: torch.device
    warmup: Warmup
    last_warmup_step_s: float

    @property
    def call(self) -> Callable[[], object]:
        return self.workload.call

    @property
    def skipped_updates(self) -> int:
        return self.workload.trainer.skipped_updates

    def block_steps(self, timing: Timing) -> int:
        """Steps per timed sample: 1 for the per-step clock; for the blocked clock the asked
        number, or enough for a block of at least MIN_BLOCK_SECONDS."""
        if timing.clock == "per-step":
            return 1
        return timing.block_steps or block_steps_for(self.last_warmup_step_s)


def warm_up(workload: Workload, device: torch.device, steps: int) -> tuple[Warmup, float]:
    """At least `steps` untimed steps, more until the step has settled: the optimizer's state
    exists and the last MIN_WARMUP updates were all applied (none skipped by GradScaler).
    Returns the record and the last step's seconds. The skip bookkeeping lives here, so that
    the timed call is the bare step."""
    trainer = workload.trainer
    skipped_before = trainer.skipped_updates
    times: list[float] = []
    applied_in_a_row = 0

    def settled() -> bool:
        if workload.spec.mode == "inference" or not trainer.counts_updates:
            return True
        return bool(trainer.optimizer.state) and applied_in_a_row >= MIN_WARMUP

    while len(times) < steps or (not settled() and len(times) < MAX_WARMUP_STEPS):
        skipped = trainer.skipped_updates
        times.append(
            _first_step_checked(workload, device)
            if not times
            else time_block(workload.call, device)
        )
        applied_in_a_row = 0 if trainer.skipped_updates > skipped else applied_in_a_row + 1
    record = Warmup(
        steps=len(times),
        first_call_s=times[0],
        settled=settled(),
        skipped_updates=trainer.skipped_updates - skipped_before,
    )
    return record, times[-1]


def _first_step_checked(workload: Workload, device: torch.device) -> float:
    """The first step, timed like the others; an error in it (a shape the model rejects, a
    loss that does not fit the outputs) is the user's input, named in one line. Out-of-memory
    errors go on to the runner's recovery."""
    try:
        return time_block(workload.call, device)
    except Exception as exc:
        if is_out_of_memory(exc) or isinstance(exc, B3Error):
            raise
        info, spec = workload.info, workload.spec
        shape = "x".join(map(str, (spec.batch_size, *info.input_shape)))
        raise B3Error(
            f"{spec.model}'s first {spec.mode} step failed on {info.input_dtype} input of shape "
            f"{shape} ({type(exc).__name__}: {first_line(exc)}); check --input-shape, "
            f"--input-dtype, --num-classes and --loss; {TRACEBACK_HINT}"
        ) from exc


@dataclass(frozen=True)
class GuardedRun(Generic[T]):
    """What run_guarded hands back: body's value, and the facts of the configuration."""

    value: T
    memory: PeakMemory | None  # None: not tracked
    warmup: Warmup
    workload: WorkloadInfo
    device_name: str

    def result(
        self,
        spec: StepSpec,
        measurement: Measurement,
        skipped: int,
        ranks: DistributedInfo | None = None,
    ) -> StepResult:
        return StepResult(
            spec,
            measurement,
            self.memory,
            self.device_name,
            self.warmup,
            self.workload,
            skipped,
            ranks,
        )


def run_guarded(
    spec: StepSpec | ResolvedStep,
    body: Callable[[ReadyStep], T],
    *,
    warmup: int = MIN_WARMUP,
    memory_budget: int | None = None,
    seed: int = 0,
    track_memory: bool = True,
) -> GuardedRun[T]:
    """Build and warm the spec's step, hand it to `body`, and return body's value with the
    configuration's peak memory (None with `track_memory` off: on CPU, starting the memory
    profiler is a process's first second and a half), warm-up and workload.

    An out-of-memory error (real, or b3's budget guard) drops the step and the exception's frames,
    releases the device's memory, and is raised as StepOutOfMemory, so the caller can go on.
    """
    step = spec if isinstance(spec, ResolvedStep) else resolve(spec)
    spec, device = step.spec, step.device
    if memory_budget is not None and not track_memory:
        raise ValueError("a memory budget needs the memory tracked")
    budget = MemoryBudget(device, memory_budget)
    workload = ready = None
    try:
        tracker = PeakMemoryTracker(device) if track_memory else None
        with device_context(device), tracker or contextlib.nullcontext():
            workload = build_workload(step, seed)
            record, last = warm_up(workload, device, max(MIN_WARMUP, warmup))
            if tracker and tracker.warmed():
                # The profiler slowed the warm-up, and on CPU the first step after it stops is
                # slow too: blocks are sized from the last of these.
                for _ in range(STEPS_AFTER_PROFILER):
                    last = time_block(workload.call, device)
                record = dataclasses.replace(record, steps=record.steps + STEPS_AFTER_PROFILER)
            ready = ReadyStep(workload, device, record, last)
            value = body(ready)
        peak = tracker.result() if tracker else None
        if peak is not None:
            budget.check(peak)
        return GuardedRun(value, peak, record, workload.info, device_name(device))
    except Exception as exc:  # noqa: BLE001 - only OOMs are handled; the rest re-raise
        if not is_out_of_memory(exc):
            raise
        failure = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    # Out here the exception, and the activations its traceback kept alive, are gone; drop the
    # step too, then release the device's memory.
    workload = ready = None
    release_memory(device)
    raise StepOutOfMemory(spec.label, failure)


def measure(
    spec: StepSpec | ResolvedStep,
    timing: Timing | None = None,
    *,
    memory_budget: int | None = None,
    seed: int = 0,
) -> StepResult:
    """Warm up, then time `timing.repeats` samples with the named clock (default: Timing())."""
    timing = timing or Timing()
    step = spec if isinstance(spec, ResolvedStep) else resolve(spec)  # once, for all below
    spec = step.spec
    if timing.discard_throttled:
        require_throttle_readings(step.device)
    if timing.phases and spec.train_step:
        raise B3Error("--phases needs b3's own training step, not --train-step's")
    if timing.phases and spec.mode == "inference":
        raise B3Error("--phases splits a training step; an inference step is one forward pass")

    def timed(ready: ReadyStep):
        rank = distributed.current()
        k = ready.block_steps(timing)
        if rank is not None:
            k = max(distributed.gather(k))  # every rank runs the same steps per block
        skipped = ready.skipped_updates
        samples = spec.samples_per_step * (rank.world_size if rank else 1)
        spans: list[tuple[float, float]] = []
        with telemetry_sampler(ready.device, timing) as sampler:
            times, rank_times = timed_blocks(ready, k, timing.repeats, spans)
        telemetry, discarded = None, None
        if sampler is not None:
            if timing.discard_throttled:
                times, rank_times, discarded = _drop_throttled(sampler, spans, times, rank_times)
            # the energy is this process's device's over every timed block, dropped ones too
            telemetry = sampler.summary(spec.samples_per_step * k * len(spans), discarded)
        comm_share = None
        if rank is not None and spec.mode == "train":
            comm_share = _comm_share(ready, k)
        measured = Measurement(tuple(times), samples, k, timing.clock)
        skipped = ready.skipped_updates - skipped
        extra = flop_figures(ready, timing)
        if timing.phases:
            extra["phases"] = time_phases(ready.workload, ready.device, timing.repeats)
        return measured, skipped, rank_times, comm_share, telemetry, extra

    run = run_guarded(step, timed, warmup=timing.warmup, memory_budget=memory_budget, seed=seed)
    measured, skipped, rank_times, comm_share, telemetry, flops = run.value
    counted = {"telemetry": telemetry, **flops}
    rank = distributed.current()
    if rank is None:
        return dataclasses.replace(run.result(spec, measured, skipped), **counted)
    peaks = tuple(distributed.gather(run.memory.peak_bytes))
    ranks = DistributedInfo(
        rank.world_size,
        rank.backend,
        spec.batch_size,
        spec.accumulation_steps if spec.mode == "train" else 1,
        rank_times,
        comm_share,
        peaks,
    )
    result = run.result(spec, measured, skipped, ranks)
    # a data-parallel step fits where its largest rank fits
    memory = dataclasses.replace(run.memory, peak_bytes=max(peaks))
    return dataclasses.replace(result, memory=memory, **counted)


def flop_figures(ready: ReadyStep, timing: Timing) -> dict:
    """A StepResult's `flops_per_step`, `recomputed_flops_per_step` and `peak` (MFU's), found
    after the clock: the FLOPs of one more step under the counter, those of it that activation
    checkpointing recomputed, and the device's peak for the precision (on CPU measured once
    per machine). Empty with --no-flops, for a compiled step (its graph hides its
    operations from the counter) or when the counting step ran out of memory (the timed
    blocks are kept)."""
    spec = ready.workload.spec
    if not timing.flops or spec.compile:
        return {}
    workload = ready.workload
    try:
        flops, recomputed = count_step_flops(
            ready.call,
            workload.trainer.model,
            workload.forward,
            ready.device,
            spec.accumulation_steps if spec.mode == "train" else 1,
        )
    except Exception as exc:  # noqa: BLE001 - only an out-of-memory is absorbed
        if not is_out_of_memory(exc):
            raise
        release_memory(ready.device)
        return {}
    return {
        "flops_per_step": flops,
        "recomputed_flops_per_step": recomputed,
        "peak": device_peak(ready.device, spec.precision, timing.peak_tflops),
    }


def telemetry_sampler(device: torch.device, timing: Timing):
    """The sampler for the timed region (None with --no-telemetry). Under DDP every rank's
    process is the measurement's own, not outside load."""
    if not timing.telemetry:
        return contextlib.nullcontext()
    rank = distributed.current()
    pids = distributed.gather(os.getpid()) if rank is not None else None
    return TelemetrySampler(device, pids=pids)


def _drop_throttled(sampler: TelemetrySampler, spans, times, rank_times):
    """The blocks taken while the GPU throttled (on any rank) dropped, and how many. If every
    block throttled, all are kept: the telemetry's contention note says so."""
    throttled = [sampler.throttled_during(*span) for span in spans]
    if distributed.current() is not None:
        throttled = [any(flags) for flags in zip(*distributed.gather(throttled))]
    if all(throttled):
        return times, rank_times, 0
    keep = [i for i, flag in enumerate(throttled) if not flag]
    times = [times[i] for i in keep]
    if rank_times is not None:
        rank_times = tuple(tuple(rank[i] for i in keep) for rank in rank_times)
    return times, rank_times, len(throttled) - len(keep)


def timed_blocks(
    ready: ReadyStep, k: int, count: int, spans: list | None = None
) -> tuple[list[float], tuple | None]:
    """`count` timed blocks of k steps each. Under DDP every rank starts each block together
    (a barrier, outside the clock) and a block's time is its slowest rank's; every rank's times
    come back too (None outside DDP). Every rank must call this alike. `spans` receives each
    block's host-clock (start, end), for matching blocks to telemetry samples."""
    rank = distributed.current()
    times = []
    for _ in range(count):
        if rank is not None:
            torch.distributed.barrier()
        began = time.perf_counter()
        times.append(time_block(ready.call, ready.device, k))
        if spans is not None:
            spans.append((began, time.perf_counter()))
    if rank is None:
        return times, None
    rank_times = tuple(tuple(t) for t in distributed.gather(times))
    return [max(sample) for sample in zip(*rank_times)], rank_times


COMM_PAIRS = 5


def _comm_share(ready: ReadyStep, k: int) -> float:
    """The share of a step spent in DDP's gradient all-reduce: blocks with the all-reduce
    skipped (no_sync) against normal blocks, alternating, slowest rank's medians."""
    normal, local = [], []
    for i in range(2 * COMM_PAIRS):
        skip = i % 2 == 1
        torch.distributed.barrier()
        with ready.workload.trainer.no_sync() if skip else contextlib.nullcontext():
            seconds = time_block(ready.call, ready.device, k)
        (local if skip else normal).append(seconds)
    per_rank = distributed.gather((normal, local))
    normal_slowest = [max(s) for s in zip(*(times for times, _ in per_rank))]
    local_slowest = [max(s) for s in zip(*(times for _, times in per_rank))]
    return 1.0 - statistics.median(local_slowest) / statistics.median(normal_slowest)


def prepare(spec: StepSpec | ResolvedStep, warmup: int = MIN_WARMUP, seed: int = 0) -> ReadyStep:
    """A built, warmed step for a timer that runs later and elsewhere (asv's time_* benchmarks
    take their samples after setup returns). Its memory is not tracked."""
    return run_guarded(
        spec, lambda ready: ready, warmup=warmup, seed=seed, track_memory=False
    ).value
