"""What a measurement leaves behind: inert records that save to JSON and load without torch or
the model registry, so that a result outlives the code and the models that made it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from b3core.measuring.stats import Measurement, Throughput
from b3core.measuring.telemetry_summary import TelemetrySummary
from b3core.spec import formats
from b3core.spec.step import StepSpec
from b3core.workloads.info import WorkloadInfo


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of one configuration, the number b3 compares and fits.

    CUDA: the most bytes held by tensors at once (max_memory_allocated), with the allocator's
    reserved peak beside it; their gap is the allocator's slack (fragmentation, cached blocks),
    and `outside_torch_bytes` is what the device holds outside torch's allocator at the end (the
    CUDA context, library workspaces, other processes). CPU: the exact peak of tensor memory
    (profiled allocations), with the resident set's growth as a secondary figure. MPS, and CPU
    results from before b3 0.3: how far the resident set rose.
    """

    peak_bytes: int
    reserved_bytes: int | None
    source: str
    outside_torch_bytes: int | None = None
    allocator_settings: str | None = None  # PYTORCH_CUDA_ALLOC_CONF
    rss_growth_bytes: int | None = None

    @property
    def fragmentation_bytes(self) -> int | None:
        return None if self.reserved_bytes is None else self.reserved_bytes - self.peak_bytes

    @property
    def limit_bytes(self) -> int:
        """What a memory budget bounds: on CUDA the allocator's reserved peak (the cap of
        set_per_process_memory_fraction counts reserved memory), elsewhere the peak."""
        return self.reserved_bytes if self.reserved_bytes is not None else self.peak_bytes

    def to_dict(self) -> dict:
        return {**self.__dict__, "fragmentation_bytes": self.fragmentation_bytes}

    @classmethod
    def from_dict(cls, d: dict) -> PeakMemory:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s for a precision, and where the figure comes from (a datasheet,
    a measured matmul, or --peak-tflops): MFU's denominator (measuring/peaks.py)."""

    flops_per_s: float
    source: str


PHASE_NOISE_FLOOR = 0.05  # phases within 5% of the plain step add up, however quiet the run
PHASE_NAMES = {
    "forward": "forward + loss",
    "backward": "backward",
    "all_reduce": "all-reduce wait",
    "optimizer": "optimizer step",
}


@dataclass(frozen=True)
class PhaseTimes:
    """Where a training step's time goes, from a separate pass after the clock: each phase's
    seconds in each phased step (a phase that runs once per micro-batch, summed over them),
    and each phased step's whole time. Under DDP the all-reduce wait is the backward pass's
    time with the all-reduce less without it (DDP's no_sync), step by step in pairs."""

    times: dict[str, tuple[float, ...]]
    step_times: tuple[float, ...]
    method: str

    def median(self, phase: str) -> float:
        return statistics.median(self.times[phase])

    @property
    def total(self) -> float:
        """The phases' medians added up."""
        return sum(self.median(phase) for phase in self.times)

    def share(self, phase: str) -> float:
        return self.median(phase) / self.total

    def to_dict(self) -> dict:
        return {
            "times": {phase: list(times) for phase, times in self.times.items()},
            "step_times": list(self.step_times),
            "method": self.method,
            "median_s": {phase: self.median(phase) for phase in self.times},
            "share": {phase: self.share(phase) for phase in self.times},
        }

    @classmethod
    def from_dict(cls, d: dict) -> PhaseTimes:
        times = {phase: tuple(values) for phase, values in d["times"].items()}
        return cls(times, tuple(d["step_times"]), d["method"])


@dataclass(frozen=True)
class Warmup:
    """The untimed steps: how many ran, the first one's time (compilation, autotuning), and
    whether the step had settled (optimizer state created, no GradScaler skip at the end)."""

    steps: int
    first_call_s: float
    settled: bool
    skipped_updates: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


COMM_SHARE_METHOD = (
    "no_sync: blocks of the same step with DDP's gradient all-reduce skipped (model.no_sync() "
    "around every micro-batch), alternating with normal blocks; share = 1 - no_sync / normal"
)


@dataclass(frozen=True)
class DistributedInfo:
    """What a data-parallel measurement adds: the world, the global batch, every rank's own
    block times (the measurement keeps the slowest rank's), and the share of a step spent in
    gradient communication."""

    world_size: int
    backend: str
    per_rank_batch: int
    accumulation_steps: int
    rank_times: tuple[tuple[float, ...], ...]  # [rank][sample], seconds per timed block
    comm_share: float | None
    rank_peak_bytes: tuple[int, ...] = ()  # each rank's peak memory, in rank order
    comm_share_method: str = COMM_SHARE_METHOD

    @property
    def global_batch_size(self) -> int:
        return self.per_rank_batch * self.world_size * self.accumulation_steps

    @property
    def straggler_spread(self) -> float:
        """The slowest rank's median block over the median rank's: 1.0 is no straggler."""
        medians = [statistics.median(times) for times in self.rank_times]
        return max(medians) / statistics.median(medians)

    def to_dict(self) -> dict:
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "per_rank_batch": self.per_rank_batch,
            "accumulation_steps": self.accumulation_steps,
            "global_batch_size": self.global_batch_size,
            "rank_times": [list(times) for times in self.rank_times],
            "straggler_spread": self.straggler_spread,
            "comm_share": self.comm_share,
            "rank_peak_bytes": list(self.rank_peak_bytes),
            "comm_share_method": self.comm_share_method,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DistributedInfo:
        return cls(
            int(d["world_size"]),
            d["backend"],
            int(d["per_rank_batch"]),
            int(d["accumulation_steps"]),
            tuple(tuple(times) for times in d["rank_times"]),
            d.get("comm_share"),
            tuple(d.get("rank_peak_bytes", ())),
            d.get("comm_share_method", COMM_SHARE_METHOD),
        )


@dataclass(frozen=True)
class StepResult:
    """A measured configuration: raw times with derived statistics, peak memory, the warm-up,
    what was built, and the optimizer updates that GradScaler skipped inside the clock."""

    spec: StepSpec
    measurement: Measurement
    memory: PeakMemory
    device_name: str
    warmup: Warmup | None = None  # None: not recorded (b3 0.1)
    workload: WorkloadInfo | None = None
    skipped_steps: int = 0
    distributed: DistributedInfo | None = None  # data parallel: the world and every rank's times
    telemetry: TelemetrySummary | None = None  # the timed region's machine state; None: unsampled
    flops_per_step: int | None = None  # counted by FlopCounterMode (measuring/flops.py)
    peak: Peak | None = None  # what MFU divides by (measuring/peaks.py)
    recomputed_flops_per_step: int = 0  # of flops_per_step, activation checkpointing's
    phases: PhaseTimes | None = None  # --phases: where a training step's time goes

    @property
    def flops_per_s(self) -> float | None:
        """Achieved FLOP/s: the counted FLOPs of a step over its measured time."""
        if self.flops_per_step is None:
            return None
        return self.flops_per_step * self.measurement.iterations_per_second

    @property
    def model_flops_per_step(self) -> int | None:
        """The model's FLOPs per step: those counted, less what checkpointing recomputed."""
        if self.flops_per_step is None:
            return None
        return self.flops_per_step - self.recomputed_flops_per_step

    def _utilisation(self, flops_per_step: int | None) -> Throughput | None:
        if flops_per_step is None or self.peak is None:
            return None
        m = self.measurement
        return m.throughput.scaled(flops_per_step / m.samples_per_step / self.peak.flops_per_s)

    @property
    def mfu(self) -> Throughput | None:
        """Model FLOPs utilisation: the model's FLOP/s (recomputation not counted) over the
        device's peak for the step's precision, as a rate with the throughput's 95% interval
        (it scales with samples/s)."""
        return self._utilisation(self.model_flops_per_step)

    @property
    def hfu(self) -> Throughput | None:
        """Hardware FLOPs utilisation: every FLOP the device did, checkpointing's recomputation
        included; None when nothing was recomputed (it equals MFU)."""
        if not self.recomputed_flops_per_step:
            return None
        return self._utilisation(self.flops_per_step)

    @property
    def rule_of_thumb_flops(self) -> int | None:
        """A sequence model's 6·N·tokens per training step (2·N·tokens per inference pass),
        Kaplan et al.'s rule with N all the parameters: it leaves out attention's L² products,
        which the counted FLOPs hold."""
        tokens = self.workload.tokens_per_sample if self.workload else None
        if not tokens:
            return None
        per_token = 6 if self.spec.mode == "train" else 2
        return per_token * self.workload.parameters * tokens * self.spec.samples_per_step

    @property
    def phase_gap(self) -> tuple[float, float] | None:
        """(the phases' medians added up over the plain step's median, less 1; the noise it is
        judged against): the noise is the larger of PHASE_NOISE_FLOOR and the plain and
        phased steps' relative IQRs."""
        if self.phases is None:
            return None
        plain = self.measurement.time
        phased = np.percentile(self.phases.step_times, [25, 50, 75])
        noise = max(
            PHASE_NOISE_FLOOR, plain.iqr / plain.median, (phased[2] - phased[0]) / phased[1]
        )
        return self.phases.total / plain.median - 1, noise

    @property
    def contended(self) -> bool:
        return bool(self.telemetry and self.telemetry.contended)

    @property
    def warnings(self) -> list[str]:
        notes = list(self.measurement.warnings)
        if self.telemetry:
            if self.telemetry.contended:
                notes.append("contended: " + "; ".join(self.telemetry.contention))
            notes += self.telemetry.warnings
            if self.telemetry.discarded_throttled_blocks:
                notes.append(
                    f"{self.telemetry.discarded_throttled_blocks} timed sample(s) taken while "
                    "the GPU throttled were discarded"
                )
        if self.warmup and not self.warmup.settled:
            notes.append(
                f"the step had not settled after {self.warmup.steps} warm-up steps (GradScaler "
                "still skipping updates, or no optimizer state yet)"
            )
        if self.skipped_steps:
            notes.append(
                f"{self.skipped_steps} of {self.measurement.steps} timed steps skipped their "
                "optimizer update (GradScaler found inf/NaN gradients): those were cheaper steps"
            )
        return notes

    @property
    def token_throughput(self) -> Throughput | None:
        """A sequence model's rate in tokens (its samples are sequences of L tokens: samples/s
        times L, with the interval scaled alike); None for other inputs."""
        tokens = self.workload.tokens_per_sample if self.workload else None
        return self.measurement.throughput.scaled(tokens) if tokens else None

    @property
    def tokens_per_s(self) -> float | None:
        rate = self.token_throughput
        return rate.samples_per_s if rate else None

    @property
    def first_call_s(self) -> float:
        return self.warmup.first_call_s if self.warmup else math.nan

    def to_dict(self) -> dict:
        m, tokens = self.measurement, self.token_throughput
        return {
            "format": formats.tag("result"),
            "label": self.spec.label,
            "spec": self.spec.to_dict(),
            "clock": m.clock,
            "skipped_steps": self.skipped_steps,
            "throughput": m.throughput.to_dict(),
            "tokens_per_s": tokens.samples_per_s if tokens else None,
            "tokens_per_s_ci95": list(tokens.ci95) if tokens else None,
            "iterations_per_s": m.iterations_per_second,
            "measurement": m.to_dict(),
            "warnings": self.warnings,
            "memory": self.memory.to_dict(),
            "warmup": self.warmup.to_dict() if self.warmup else None,
            "workload": self.workload.to_dict() if self.workload else None,
            "device_name": self.device_name,
            "distributed": self.distributed.to_dict() if self.distributed else None,
            "telemetry": self.telemetry.to_dict() if self.telemetry else None,
            "contended": self.contended,
            "flops_per_step": self.flops_per_step,
            "flops_per_s": self.flops_per_s,
            "rule_of_thumb_flops_per_step": self.rule_of_thumb_flops,
            "peak_flops_per_s": self.peak.flops_per_s if self.peak else None,
            "peak_flops_source": self.peak.source if self.peak else None,
            "mfu": self.mfu.samples_per_s if self.mfu else None,
            "mfu_ci95": list(self.mfu.ci95) if self.mfu else None,
            "recomputed_flops_per_step": self.recomputed_flops_per_step,
            "model_flops_per_step": self.model_flops_per_step,
            "hfu": self.hfu.samples_per_s if self.hfu else None,
            "phases": self.phases.to_dict() if self.phases else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> StepResult:
        """Reads what to_dict wrote (derived figures are recomputed), older records through
        their upgrade (`_from_unversioned`)."""
        d = formats.upgraded("result", d, "a b3 result")
        warmup = d.get("warmup")
        return cls(
            StepSpec.from_dict(d["spec"]),
            Measurement.from_dict(d["measurement"]),
            PeakMemory.from_dict(d["memory"]),
            d["device_name"],
            Warmup(**warmup) if warmup else None,
            WorkloadInfo.from_dict(d["workload"]) if d.get("workload") else None,
            int(d.get("skipped_steps", 0)),
            DistributedInfo.from_dict(d["distributed"]) if d.get("distributed") else None,
            TelemetrySummary.from_dict(d["telemetry"]) if d.get("telemetry") else None,
            d.get("flops_per_step"),
            Peak(d["peak_flops_per_s"], d["peak_flops_source"])
            if d.get("peak_flops_per_s")
            else None,
            int(d.get("recomputed_flops_per_step") or 0),
            PhaseTimes.from_dict(d["phases"]) if d.get("phases") else None,
        )


@formats.upgrade("result", 0)
def _from_unversioned(d: dict) -> dict:
    """Result records carried no format before b3 0.5; b3 0.2 to 0.4 wrote today's shape.
    b3 0.1's named no clock (it timed every step) and kept only the first call's time of the
    warm-up; its pytest plugin wrote the record flat into a benchmark's extra_info."""
    if "b3_spec" in d:  # b3 0.1's extra_info
        d = {
            "spec": d["b3_spec"],
            "measurement": {"times_s": d["times_s"], "samples_per_step": d["samples_per_step"]},
            "memory": {
                "peak_bytes": d["peak_memory_bytes"],
                "reserved_bytes": d.get("peak_memory_reserved_bytes"),
                "source": d.get("peak_memory_source", "unknown"),
            },
            "device_name": d.get("device_name", "unknown"),
        }
    if "clock" in d["measurement"]:
        return d
    warmup = None
    if "first_call_s" in d:
        warmup = {"steps": 0, "first_call_s": d["first_call_s"], "settled": True}
        warmup["skipped_updates"] = 0
    return {**d, "measurement": {**d["measurement"], "clock": "per-step"}, "warmup": warmup}
