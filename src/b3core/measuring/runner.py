"""What is measured (`StepSpec`), how it is built, and the measuring itself (`measure`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from b3core.errors import B3Error, StepOutOfMemory
from b3core.measuring.clocks import time_repeats
from b3core.measuring.memory import (
    MemoryBudget,
    PeakMemory,
    PeakMemoryTracker,
    is_out_of_memory,
    release_memory,
)
from b3core.measuring.stats import Measurement
from b3core.spec.validate import require_choice, require_positive_int
from b3core.workloads.data import synthetic_batch
from b3core.workloads.devices import PRECISIONS, check_precision, resolve_device
from b3core.workloads.models import get_model_spec
from b3core.workloads.training import OPTIMIZERS, Trainer, prepare_training

T = TypeVar("T")
MODES = ("train", "inference")
MIN_WARMUP = 2  # cuDNN autotuning, allocator growth and Adam's lazily created state


def require_warmup(warmup: int) -> int:
    """Enough untimed steps that every timed one is a steady-state step."""
    if warmup < MIN_WARMUP:
        raise B3Error(f"warm-up must be at least {MIN_WARMUP} steps, got {warmup}")
    return warmup


@dataclass(frozen=True)
class StepSpec:
    """One configuration to time. `batch_size` is the micro-batch; a training step processes
    `batch_size * accumulation_steps` samples in one optimizer update."""

    model: str
    batch_size: int
    precision: str = "fp32"
    accumulation_steps: int = 1
    mode: str = "train"
    image_size: int | None = None
    num_classes: int | None = None
    optimizer: str = "adam"
    lr: float = 5e-4
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        require_positive_int("batch size", self.batch_size)
        require_positive_int("accumulation steps", self.accumulation_steps)
        require_choice("mode", self.mode, MODES)
        require_choice("precision", self.precision, PRECISIONS)
        require_choice("optimizer", self.optimizer, OPTIMIZERS)
        spec = get_model_spec(self.model)
        if self.image_size is not None:
            spec.check_image_size(self.image_size)

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or get_model_spec(self.model).image_size

    @property
    def resolved_num_classes(self) -> int:
        return self.num_classes or get_model_spec(self.model).num_classes

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * (self.accumulation_steps if self.mode == "train" else 1)

    @property
    def label(self) -> str:
        parts = [self.model, self.mode, f"bs{self.batch_size}", self.precision]
        if self.mode == "train" and self.accumulation_steps > 1:
            parts.append(f"acc{self.accumulation_steps}")
        if self.image_size:
            parts.append(f"img{self.image_size}")
        if self.channels_last:
            parts.append("cl")
        if self.compile:
            parts.append("compiled")
        if not self.cudnn_benchmark:
            parts.append("no-cudnn-benchmark")
        return "/".join(parts)

    def replace(self, **changes) -> StepSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StepSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def trainer_for(spec: StepSpec, device: torch.device, seed: int = 0) -> Trainer:
    """The spec's model, optimizer and precision settings, ready on the device."""
    return prepare_training(
        spec.model,
        device,
        precision=spec.precision,
        optimizer=spec.optimizer,
        lr=spec.lr,
        image_size=spec.image_size,
        num_classes=spec.num_classes,
        channels_last=spec.channels_last,
        compile=spec.compile,
        cudnn_benchmark=spec.cudnn_benchmark,
        seed=seed,
    )


def build_step(spec: StepSpec, device: torch.device, seed: int = 0) -> Callable[[], object]:
    """Model, optimizer and one fixed batch on the device, closed over by a no-argument step."""
    trainer = trainer_for(spec, device, seed)
    inputs, targets = synthetic_batch(
        spec.batch_size,
        get_model_spec(spec.model).input_shape(spec.image_size),
        spec.resolved_num_classes,
        device,
        channels_last=spec.channels_last,
        seed=seed,
    )
    if spec.mode == "inference":
        trainer.model.eval()
        return lambda: trainer.infer(inputs)
    # The same device batch serves every micro-batch: the arithmetic is identical, memory is not
    # spent on k copies of the input, and nothing is loaded inside the timed region.
    micro_batches = [(inputs, targets)] * spec.accumulation_steps
    return lambda: trainer.step(micro_batches)


@dataclass(frozen=True)
class StepResult:
    """A measured configuration: raw times with derived statistics, and its peak memory."""

    spec: StepSpec
    measurement: Measurement
    memory: PeakMemory
    first_call_s: float
    device_name: str

    def to_dict(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "label": self.spec.label,
            "measurement": self.measurement.to_dict(),
            "memory": self.memory.to_dict(),
            "first_call_s": self.first_call_s,
            "device_name": self.device_name,
        }

    @classmethod
    def from_dict(cls, d: dict) -> StepResult:
        return cls(
            StepSpec.from_dict(d["spec"]),
            Measurement.from_dict(d["measurement"]),
            PeakMemory(**d["memory"]),
            float(d["first_call_s"]),
            d["device_name"],
        )


def prepare_device(spec: StepSpec) -> torch.device:
    """The spec's device, checked to exist and to run the spec's precision."""
    device = resolve_device(spec.device)
    check_precision(spec.precision, device)
    return device


def run_guarded(
    spec: StepSpec,
    body: Callable[[Callable[[], object], torch.device], T],
    *,
    memory_budget: int | None = None,
    seed: int = 0,
) -> tuple[T, PeakMemory]:
    """Build the spec's step, hand it to `body` (which times it), and return body's value with
    the configuration's peak memory. Every harness (the CLI, sweeps, pytest and asv) goes
    through here, so that all build steps, track memory and survive OOM in one way.

    An out-of-memory error (real, or b3's budget guard) drops the step and the exception's frames,
    releases the device's memory, and is raised as StepOutOfMemory, so the caller can go on.
    """
    device = prepare_device(spec)
    budget = MemoryBudget(device, memory_budget)
    holder: dict[str, Callable[[], object]] = {}
    failure = ""
    try:
        with PeakMemoryTracker(device) as tracker:
            holder["step"] = build_step(spec, device, seed=seed)
            value = body(holder["step"], device)
        peak = tracker.result()
        budget.check(peak)
        return value, peak
    except Exception as exc:  # noqa: BLE001 - only OOMs are handled; the rest re-raise
        if not is_out_of_memory(exc):
            raise
        failure = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    finally:
        holder.clear()
    # Out here the exception, and the activations its traceback kept alive, are gone.
    release_memory(device)
    raise StepOutOfMemory(spec.label, failure)


def measure(
    spec: StepSpec,
    *,
    repeats: int = 10,
    warmup: int = MIN_WARMUP,
    memory_budget: int | None = None,
    seed: int = 0,
) -> StepResult:
    """Warm up, then time `repeats` steps, each bracketed by device synchronisation."""
    from b3core.measuring.machine import device_name

    require_positive_int("repeats", repeats)
    require_warmup(warmup)

    def timed(step, device):
        return (*time_repeats(step, device, repeats=repeats, warmup=warmup), device_name(device))

    (warmup_times, times, name), peak = run_guarded(
        spec, timed, memory_budget=memory_budget, seed=seed
    )
    return StepResult(
        spec, Measurement(tuple(times), spec.samples_per_step), peak, warmup_times[0], name
    )
