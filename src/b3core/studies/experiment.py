"""`b3 run`: B3's experiment (train N epochs through a DataLoader, then evaluate), measured
properly: warm-up outside the clock for both phases, device synchronisation, per-sample
throughput (total samples / total time) and repeats."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DistributedSampler

from b3core.errors import B3Error, StepOutOfMemory
from b3core.measuring import distributed
from b3core.measuring.result import StepResult
from b3core.measuring.runner import ReadyStep, measure, run_guarded
from b3core.measuring.stats import Summary, Throughput, ratio_throughput, summarize
from b3core.spec.run import RunConfig
from b3core.spec.step import MIN_WARMUP, Timing
from b3core.spec.validate import require_positive_int
from b3core.workloads.data import B3_TRAIN, Splits, cifar10_splits, make_loader, synthetic_splits
from b3core.workloads.devices import synchronize
from b3core.workloads.models import step_model
from b3core.workloads.training import windows

CLOCK = "wall clock around each phase, the device synced at both ends"


@dataclass(frozen=True)
class PhaseTiming:
    seconds: float
    samples: int
    steps: int  # optimizer steps (training) or forward passes (inference)


@dataclass(frozen=True)
class RunResult:
    """One independent run: the train phase and the inference phase."""

    train: PhaseTiming
    inference: PhaseTiming
    final_loss: float

    @property
    def combined_seconds(self) -> float:
        return self.train.seconds + self.inference.seconds


def load_splits(cfg: RunConfig) -> Splits:
    _, model_input = step_model(cfg.step)
    if cfg.dataset == "cifar10":
        if not model_input.is_image or model_input.shape[0] != 3:
            shape = "x".join(map(str, model_input.shape))
            raise B3Error(f"CIFAR-10 is 3-channel images; {cfg.step.model} takes {shape} input")
        size = model_input.shape[-1]
        return cifar10_splits(cfg.data_dir, size, cfg.train_size, seed=cfg.seed)
    return synthetic_splits(cfg.train_size or B3_TRAIN, model_input, seed=cfg.seed)


def eval_batch_sizes(splits: Splits, batch_size: int) -> list[int]:
    """Every batch shape evaluation will see: full batches and each split's last, partial one
    (cuDNN autotunes per shape, so each must be warmed outside the clock)."""
    sizes = {min(batch_size, len(ds)) for ds in (splits.val, splits.test)}
    sizes |= {len(ds) % batch_size for ds in (splits.val, splits.test)}
    return sorted(sizes - {0})


def _all_ranks_ready() -> None:
    """Under data parallel, every rank starts a phase's clock together."""
    if distributed.current() is not None:
        torch.distributed.barrier()


def _phase(seconds: float, samples: int, steps: int) -> PhaseTiming:
    """A phase's timing; under data parallel the slowest rank's time and every rank's samples
    (each rank processed its own shard)."""
    if distributed.current() is None:
        return PhaseTiming(seconds, samples, steps)
    ranks = distributed.gather((seconds, samples))
    return PhaseTiming(max(s for s, _ in ranks), sum(n for _, n in ranks), steps)


def run_once(cfg: RunConfig, splits: Splits, seed: int) -> RunResult:
    """One run through the runner: it builds the step and warms it (on a device batch of the
    loader's shape) before the train clock starts."""
    spec = cfg.step

    def body(ready: ReadyStep) -> RunResult:
        trainer, device = ready.workload.trainer, ready.device
        pin = device.type == "cuda"
        train_loader = make_loader(
            splits.train,
            spec.batch_size,
            train=True,
            num_workers=cfg.num_workers,
            seed=seed,
            pin_memory=pin,
        )
        if len(train_loader) == 0:
            raise B3Error(
                f"batch size {spec.batch_size} is larger than the {len(splits.train)} "
                "training images"
            )

        def to_device(batch):
            images, labels = batch
            images = images.to(device, non_blocking=pin, memory_format=trainer.memory_format)
            return images, labels.to(device, non_blocking=pin)

        synchronize(device)
        _all_ranks_ready()
        began = time.perf_counter()
        train_samples, train_steps, loss = 0, 0, torch.zeros(())
        for epoch in range(cfg.num_epochs):
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            for window in windows(train_loader, spec.accumulation_steps):
                micro_batches = [to_device(b) for b in window]
                loss = trainer.step(micro_batches)
                train_samples += sum(len(t) for _, t in micro_batches)
                train_steps += 1
        synchronize(device)
        train = _phase(time.perf_counter() - began, train_samples, train_steps)

        trainer.model.eval()
        shape = ready.workload.info.input_shape
        dtype = getattr(torch, ready.workload.info.input_dtype)
        for size in eval_batch_sizes(splits, spec.batch_size):
            warm = torch.zeros(size, *shape, dtype=dtype, device=device)
            warm = warm.to(memory_format=trainer.memory_format)
            for _ in range(MIN_WARMUP):
                trainer.infer(warm)
        eval_loaders = [
            make_loader(
                ds, spec.batch_size, train=False, num_workers=cfg.num_workers, pin_memory=pin
            )
            for ds in (splits.val, splits.test)
        ]
        synchronize(device)
        _all_ranks_ready()
        began = time.perf_counter()
        eval_samples, eval_batches = 0, 0
        for loader in eval_loaders:
            for batch in loader:
                images, _ = to_device(batch)
                trainer.infer(images)
                eval_samples += len(images)
                eval_batches += 1
        synchronize(device)
        inference = _phase(time.perf_counter() - began, eval_samples, eval_batches)
        return RunResult(train, inference, float(loss))

    return run_guarded(spec, body, warmup=cfg.warmup, seed=seed, track_memory=False).value


@dataclass(frozen=True)
class ExperimentResult:
    config: RunConfig
    runs: tuple[RunResult, ...]
    step: StepResult | None = None  # the same training step timed alone, on a device batch
    failure: str | None = None  # why the runs stopped early (out of memory), if they did
    interrupted: bool = False  # Ctrl-C or SIGTERM: the finished runs are kept

    def input_pipeline(self) -> dict | None:
        """Train time minus what its optimizer steps cost alone (steps x the step benchmark's
        mean step, blocked clock): the DataLoader, host-to-device copies, per-epoch overhead."""
        if self.step is None or not self.runs:
            return None
        step_s = 1.0 / self.step.measurement.iterations_per_second
        train_s = self.seconds("train").mean
        compute_s = self.runs[0].train.steps * step_s
        return {
            "step_mean_s": step_s,
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

    def throughput(self, phase: str) -> Throughput:
        """All runs' samples over all runs' time (each run processes the same samples)."""
        return ratio_throughput([getattr(r, phase).seconds for r in self.runs], self.samples(phase))

    def samples(self, phase: str) -> int:
        return getattr(self.runs[0], phase).samples

    def summary(self) -> dict:
        if not self.runs:
            return {}

        def phase(name: str) -> dict:
            return {
                "seconds": self.seconds(name).to_dict(),
                "throughput": self.throughput(name).to_dict(),
                "samples": self.samples(name),
            }

        return {
            "clock": CLOCK,
            "train": phase("train"),
            "inference": phase("inference"),
            "combined_seconds": self.seconds("combined").to_dict(),
            "input_pipeline": self.input_pipeline(),
        }

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "runs": [dataclasses.asdict(r) for r in self.runs],
            "summary": self.summary(),
            "step": self.step.to_dict() if self.step else None,
            "failure": self.failure,
            "interrupted": self.interrupted,
        }


def run_experiment(
    cfg: RunConfig, repeats: int = 1, progress=None, step_baseline: bool = True
) -> ExperimentResult:
    """`repeats` independent runs (fresh model and seed each), for mean and SD across runs;
    then, unless step_baseline is off, the training step alone, to split off data loading.
    An out-of-memory error ends the runs but keeps the ones already measured."""
    require_positive_int("repeats", repeats)
    splits = load_splits(cfg)
    runs: list[RunResult] = []
    try:
        for i in range(repeats):
            runs.append(run_once(cfg, splits, seed=cfg.seed + i))
            if progress:
                progress(i + 1, repeats)
        step = (
            measure(cfg.step, Timing(warmup=cfg.warmup), seed=cfg.seed) if step_baseline else None
        )
    except StepOutOfMemory as oom:
        return ExperimentResult(cfg, tuple(runs), None, str(oom))
    except KeyboardInterrupt:
        return ExperimentResult(cfg, tuple(runs), None, "interrupted", interrupted=True)
    return ExperimentResult(cfg, tuple(runs), step)
