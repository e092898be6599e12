"""`b3 run`: B3's experiment (train N epochs through a DataLoader, then evaluate), measured
properly: warm-up outside the clock, device synchronisation, per-sample throughput and repeats."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from b3core.errors import B3Error
from b3core.measuring.runner import (
    MIN_WARMUP,
    StepResult,
    StepSpec,
    measure,
    require_warmup,
    trainer_for,
)
from b3core.measuring.stats import Summary, summarize
from b3core.spec.validate import require_choice, require_positive_int
from b3core.workloads.data import B3_TRAIN, Splits, cifar10_splits, make_loader, synthetic_splits
from b3core.workloads.devices import check_precision, resolve_device, synchronize
from b3core.workloads.models import get_model_spec
from b3core.workloads.training import windows

DATASETS = ("synthetic", "cifar10")


@dataclass(frozen=True)
class RunConfig:
    model: str = "mobilenet_v3_large"
    batch_size: int = 128
    num_epochs: int = 1
    precision: str = "fp32"
    accumulation_steps: int = 1
    device: str = "auto"
    dataset: str = "synthetic"
    data_dir: str | None = None
    train_size: int | None = None
    image_size: int | None = None
    num_workers: int = 0
    seed: int = 123
    lr: float = 5e-4
    optimizer: str = "adam"
    channels_last: bool = False
    cudnn_benchmark: bool = True
    warmup: int = MIN_WARMUP

    def __post_init__(self) -> None:
        self.step_spec(self.device)  # the step's own fields: model, batch, precision, ...
        require_positive_int("num epochs", self.num_epochs)
        require_warmup(self.warmup)
        if self.train_size is not None:
            require_positive_int("train size", self.train_size)
        if self.num_workers < 0:
            raise B3Error(f"num workers must be 0 or more, got {self.num_workers}")
        require_choice("dataset", self.dataset, DATASETS)
        if self.dataset == "cifar10" and not self.data_dir:
            raise B3Error("--dataset cifar10 needs --data-dir PATH (b3 never downloads data)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def step_spec(self, device: torch.device | str) -> StepSpec:
        """The training step this run repeats, as the step benchmarks describe it."""
        return StepSpec(
            model=self.model,
            batch_size=self.batch_size,
            precision=self.precision,
            accumulation_steps=self.accumulation_steps,
            image_size=self.image_size,
            optimizer=self.optimizer,
            lr=self.lr,
            channels_last=self.channels_last,
            cudnn_benchmark=self.cudnn_benchmark,
            device=str(device),
        )


@dataclass(frozen=True)
class PhaseTiming:
    seconds: float
    samples: int
    steps: int  # optimizer steps (training) or forward passes (inference)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


@dataclass(frozen=True)
class RunResult:
    """One independent run: the train phase and the inference phase."""

    train: PhaseTiming
    inference: PhaseTiming
    final_loss: float

    @property
    def combined_seconds(self) -> float:
        return self.train.seconds + self.inference.seconds


def load_splits(cfg: RunConfig, image_size: int, num_classes: int) -> Splits:
    if cfg.dataset == "cifar10":
        return cifar10_splits(cfg.data_dir, image_size, cfg.train_size, seed=cfg.seed)
    train_size = cfg.train_size or B3_TRAIN
    return synthetic_splits(train_size, image_size, num_classes, seed=cfg.seed)


def run_once(cfg: RunConfig, splits: Splits, device: torch.device, seed: int) -> RunResult:
    trainer = trainer_for(cfg.step_spec(device), device, seed)
    memory_format = trainer.memory_format
    pin = device.type == "cuda"
    train_loader = make_loader(
        splits.train,
        cfg.batch_size,
        train=True,
        num_workers=cfg.num_workers,
        seed=seed,
        pin_memory=pin,
    )
    if len(train_loader) == 0:
        raise B3Error(
            f"batch size {cfg.batch_size} is larger than the {len(splits.train)} training images"
        )

    def to_device(batch):
        images, labels = batch
        images = images.to(device, non_blocking=pin, memory_format=memory_format)
        return images, labels.to(device, non_blocking=pin)

    # Warm-up outside the clock, on one real batch: cuDNN autotuning, allocator growth, Adam's
    # state. It updates the weights a little, which does not change the cost of later steps.
    warm_batch = to_device(next(iter(train_loader)))
    for _ in range(cfg.warmup):
        trainer.step([warm_batch])
    del warm_batch

    synchronize(device)
    began = time.perf_counter()
    train_samples, train_steps, loss = 0, 0, torch.zeros(())
    for _ in range(cfg.num_epochs):
        for window in windows(train_loader, cfg.accumulation_steps):
            micro_batches = [to_device(b) for b in window]
            loss = trainer.step(micro_batches)
            train_samples += sum(len(t) for _, t in micro_batches)
            train_steps += 1
    synchronize(device)
    train = PhaseTiming(time.perf_counter() - began, train_samples, train_steps)

    trainer.model.eval()
    eval_loaders = [
        make_loader(ds, cfg.batch_size, train=False, num_workers=cfg.num_workers, pin_memory=pin)
        for ds in (splits.val, splits.test)
    ]
    synchronize(device)
    began = time.perf_counter()
    eval_samples, eval_batches = 0, 0
    for loader in eval_loaders:
        for batch in loader:
            images, _ = to_device(batch)
            trainer.infer(images)
            eval_samples += len(images)
            eval_batches += 1
    synchronize(device)
    inference = PhaseTiming(time.perf_counter() - began, eval_samples, eval_batches)
    return RunResult(train, inference, float(loss))


@dataclass(frozen=True)
class ExperimentResult:
    config: RunConfig
    runs: tuple[RunResult, ...]
    device_name: str
    step: StepResult | None = None  # the same training step timed alone, on a device batch

    def input_pipeline(self) -> dict | None:
        """Train time minus what its optimizer steps cost alone (steps x the step benchmark's
        median): the DataLoader, host-to-device copies and per-epoch overhead."""
        if self.step is None:
            return None
        step_s = self.step.measurement.time.median
        train_s = self.seconds("train").mean
        compute_s = self.runs[0].train.steps * step_s
        return {
            "step_median_s": step_s,
            "steps": self.runs[0].train.steps,
            "compute_s": compute_s,
            "overhead_s": train_s - compute_s,
            "overhead_fraction": (train_s - compute_s) / train_s if train_s else float("nan"),
        }

    def seconds(self, phase: str) -> Summary:
        """Over runs: `phase` is "train", "inference" or "combined"."""
        if phase == "combined":
            return summarize([r.combined_seconds for r in self.runs])
        return summarize([getattr(r, phase).seconds for r in self.runs])

    def samples_per_second(self, phase: str) -> Summary:
        return summarize([getattr(r, phase).samples_per_second for r in self.runs])

    def samples(self, phase: str) -> int:
        return getattr(self.runs[0], phase).samples

    def summary(self) -> dict:
        def phase(name: str) -> dict:
            return {
                "seconds": self.seconds(name).to_dict(),
                "samples_per_s": self.samples_per_second(name).to_dict(),
                "samples": self.samples(name),
            }

        return {
            "train": phase("train"),
            "inference": phase("inference"),
            "combined_seconds": self.seconds("combined").to_dict(),
            "input_pipeline": self.input_pipeline(),
        }

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "device_name": self.device_name,
            "runs": [dataclasses.asdict(r) for r in self.runs],
            "summary": self.summary(),
            "step": self.step.to_dict() if self.step else None,
        }


def run_experiment(
    cfg: RunConfig, repeats: int = 1, progress=None, step_baseline: bool = True
) -> ExperimentResult:
    """`repeats` independent runs (fresh model and seed each), for mean and SD across runs;
    then, unless step_baseline is off, the training step alone, to split off data loading."""
    from b3core.measuring.machine import device_name

    require_positive_int("repeats", repeats)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device)
    model_spec = get_model_spec(cfg.model)
    image_size = cfg.image_size or model_spec.image_size
    splits = load_splits(cfg, image_size, model_spec.num_classes)
    runs = []
    for i in range(repeats):
        runs.append(run_once(cfg, splits, device, seed=cfg.seed + i))
        if progress:
            progress(i + 1, repeats)
    step = None
    if step_baseline:
        spec = cfg.step_spec(device)
        step = measure(spec, repeats=10, warmup=max(MIN_WARMUP, cfg.warmup), seed=cfg.seed)
    return ExperimentResult(cfg, tuple(runs), device_name(device), step)
