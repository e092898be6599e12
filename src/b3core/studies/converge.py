"""`b3 converge`: steps, samples and seconds to a target validation accuracy, per batch size.

Each (batch size, seed) run builds the step's model, optimizer and precision as every b3 step
does (`prepare_training`), and trains on real data with its own schedule, fixed before it
starts (`Schedule`): the learning-rate rule and warm-up, the rate's decay or the batch's growth
in its place, and the update budget (regime adaptation: as many updates as the base batch).
Validation runs `evals_per_epoch` times an epoch; the first that reaches the target fixes steps,
epochs, samples and seconds to target. Seconds are training-step seconds only: each update is
timed between two device syncs, and data loading, evaluation and the noise-scale probe are
outside the clock. A run whose loss turns non-finite is recorded as diverged, at its update.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from b3core.errors import B3Error
from b3core.measuring.memory import release_memory
from b3core.measuring.noise_scale import GradientProbe, NoiseScale
from b3core.measuring.protocol import is_out_of_memory
from b3core.spec import formats
from b3core.spec.converge import ConvergeSpec
from b3core.spec.step import StepSpec
from b3core.studies import log_file
from b3core.studies.converge_runs import ConvergeRun, CurvePoint
from b3core.studies.lr_rules import scale_lr, warmup_lr, warmup_steps
from b3core.workloads.build import prepare_training, resolve
from b3core.workloads.data import Splits, cifar10_splits, digits_splits, image_folder_splits
from b3core.workloads.devices import synchronize
from b3core.workloads.ghost_bn import use_ghost_batch_norm


def load_splits(spec: ConvergeSpec, image_size: int) -> Splits:
    if spec.dataset == "digits":
        return digits_splits(image_size)
    if spec.dataset == "cifar10":
        splits = cifar10_splits(spec.data_dir, image_size)
        return Splits(splits.train, splits.val)
    return image_folder_splits(spec.data_dir, image_size)


def dataset_classes(splits: Splits) -> int:
    """Classes in the training split (ImageFolder's class folders, or the labels' range)."""
    dataset = splits.train
    while hasattr(dataset, "dataset"):  # a Subset's
        dataset = dataset.dataset
    if hasattr(dataset, "classes"):
        return len(dataset.classes)
    return int(dataset.tensors[1].max()) + 1


def steps_per_epoch(train_size: int, batch: int) -> int:
    """Updates in one pass over the training split (the last partial batch is dropped)."""
    return max(1, train_size // batch)


@dataclass(frozen=True)
class Schedule:
    """One run's learning rate, batch and budget, as functions of the update count and the
    epochs done. Fixed before the run starts."""

    spec: ConvergeSpec
    batch: int  # the first batch per update
    base_lr: float
    train_size: int

    @property
    def peak_lr(self) -> float:
        if self.spec.lr_rule == "none":
            return self.base_lr
        return scale_lr(self.base_lr, self.spec.reference_batch, self.batch, self.spec.lr_rule)

    @property
    def warmup_updates(self) -> int:
        """Goyal et al.'s linear ramp from the base rate, when the rule raised the rate."""
        if self.peak_lr <= self.base_lr or not self.spec.warmup_epochs:
            return 0
        return warmup_steps(
            self.batch, self.spec.reference_batch, self.train_size, self.spec.warmup_epochs
        )

    @property
    def budget_updates(self) -> int | None:
        """With regime adaptation, the base batch's updates in max_epochs; else None (the
        budget is max_epochs epochs)."""
        if not self.spec.regime_adaptation:
            return None
        base = steps_per_epoch(self.train_size, self.spec.reference_batch)
        return math.ceil(self.spec.max_epochs * base)

    def decays_done(self, epochs: float) -> int:
        return sum(1 for e in self.spec.decay_epochs if epochs >= e)

    def batch_at(self, epochs: float) -> int:
        """Smith et al.: the batch grows by 1/decay_factor where the rate would have dropped."""
        if not self.spec.grow_batch:
            return self.batch
        grown = self.batch * (1 / self.spec.decay_factor) ** self.decays_done(epochs)
        return min(round(grown), self.train_size)

    def lr_at(self, update: int, epochs: float) -> float:
        """The rate for update `update` (0-based), begun after `epochs` epochs."""
        lr = warmup_lr(update, self.warmup_updates, self.peak_lr, self.base_lr / self.peak_lr)
        if self.spec.grow_batch:
            return lr
        return lr * self.spec.decay_factor ** self.decays_done(epochs)

    def done(self, updates: int, epochs: float) -> bool:
        budget = self.budget_updates
        return updates >= budget if budget is not None else epochs >= self.spec.max_epochs - 1e-9


def check_batches(spec: ConvergeSpec, step: StepSpec, train_size: int) -> None:
    """Every batch (and the grown ones) splits into micro-batches, and each micro-batch into
    Ghost BatchNorm's virtual batches; one line each, before anything runs."""
    k = step.accumulation_steps
    for batch in spec.batch_sizes:
        schedule = Schedule(spec, batch, step.lr, train_size)
        for grown in {schedule.batch_at(e) for e in (0.0, *spec.decay_epochs)}:
            if grown > train_size:
                raise B3Error(f"batch {grown} is larger than the {train_size} training samples")
            if grown % k:
                raise B3Error(f"batch {grown} does not split into {k} micro-batches")
            if spec.ghost_batch and (grown // k) % spec.ghost_batch:
                raise B3Error(
                    f"--ghost-batch {spec.ghost_batch} does not divide the micro-batch of "
                    f"{grown // k} (batch {grown}, {k} accumulation steps)"
                )


def accuracy(model: torch.nn.Module, loader, device, autocast) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.inference_mode(), autocast():
        for inputs, targets in loader:
            predicted = model(inputs.to(device)).argmax(dim=1).cpu()
            correct += int((predicted == targets).sum())
            total += len(targets)
    model.train(was_training)
    return correct / max(total, 1)


def _batches(splits: Splits, batch: int, seed: int, epoch: int) -> Iterator:
    """One epoch of shuffled training batches (the last partial batch dropped). Tensors in
    memory (digits) are sliced directly; anything else goes through a DataLoader."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    data = splits.train
    if isinstance(data, torch.utils.data.TensorDataset):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            yield data[order[start : start + batch]]
        return
    yield from torch.utils.data.DataLoader(
        data, batch_size=batch, shuffle=True, drop_last=True, generator=generator
    )


def _timed_update(trainer, micro: list, device: torch.device, probe) -> tuple[float, float]:
    """One update between two device syncs: its loss and its seconds, less the noise-scale
    probe's own (synced) time."""
    probed = probe.seconds if probe else 0.0
    synchronize(device)
    began = time.perf_counter()
    loss = trainer.step(micro)
    synchronize(device)
    seconds = time.perf_counter() - began - ((probe.seconds - probed) if probe else 0.0)
    return float(loss), seconds


def run_one(
    spec: ConvergeSpec,
    step: StepSpec,
    splits: Splits,
    batch: int,
    seed: int,
    device: torch.device,
) -> ConvergeRun:
    """Train one (batch, seed) run; its record (see the module's doc)."""
    trainer = prepare_training(
        resolve(step.replace(batch_size=batch // step.accumulation_steps)), seed
    )
    model = trainer.model
    if spec.ghost_batch:
        use_ghost_batch_norm(model, spec.ghost_batch)
    k = step.accumulation_steps
    probe = GradientProbe(model.parameters(), trainer.scaler) if k >= 2 else None
    trainer.after_backward = probe
    noise = NoiseScale()
    train_size = len(splits.train)
    schedule = Schedule(spec, batch, step.lr, train_size)
    val_loader = torch.utils.data.DataLoader(splits.val, batch_size=256)
    fixed = torch.randperm(train_size, generator=torch.Generator().manual_seed(seed))
    train_sample = torch.utils.data.Subset(splits.train, fixed[: len(splits.val)].tolist())
    train_eval_loader = torch.utils.data.DataLoader(train_sample, batch_size=256)

    def evaluate() -> float:
        return accuracy(model, val_loader, device, trainer.autocast)

    curve: list[CurvePoint] = []
    at_target: CurvePoint | None = None  # the first point at the target accuracy
    diverged_at: int | None = None
    updates = samples = 0
    epochs = seconds = loss_sum = 0.0
    loss_count = 0
    epoch_index = 0
    while not schedule.done(updates, epochs) and diverged_at is None:
        current = schedule.batch_at(epochs)
        per_epoch = steps_per_epoch(train_size, current)
        every = max(1, per_epoch // spec.evals_per_epoch)
        for inputs, targets in _batches(splits, current, seed, epoch_index):
            if schedule.done(updates, epochs) or schedule.batch_at(epochs) != current:
                break
            for group in trainer.optimizer.param_groups:
                group["lr"] = schedule.lr_at(updates, epochs)
            inputs = inputs.to(device)
            if inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=trainer.memory_format)
            micro = list(zip(inputs.chunk(k), targets.to(device).chunk(k)))
            loss_value, update_seconds = _timed_update(trainer, micro, device, probe)
            seconds += update_seconds
            updates += 1
            samples += len(targets)
            epochs += 1 / per_epoch
            if not math.isfinite(loss_value):
                diverged_at = updates
                break
            loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
            if probe:
                window = probe.window()
                if window is not None:
                    noise.update(*window, b_small=len(targets) / k, b_big=len(targets))
            last = schedule.done(updates, epochs)
            if updates % every and not last:
                continue
            point = CurvePoint(
                update=updates,
                samples=samples,
                epochs=epochs,
                seconds=seconds,
                batch_size=current,
                lr=trainer.optimizer.param_groups[0]["lr"],
                train_loss=loss_sum / loss_count,
                val_accuracy=evaluate(),
                noise_scale=noise.b_simple,
            )
            curve.append(point)
            loss_sum, loss_count = 0.0, 0
            if at_target is None and point.val_accuracy >= spec.target_accuracy:
                at_target = point
                if spec.stop_at_target:
                    break
        if spec.stop_at_target and at_target is not None:
            break
        epoch_index += 1
    train_accuracy = None
    if diverged_at is None:
        train_accuracy = accuracy(model, train_eval_loader, device, trainer.autocast)
    return ConvergeRun.finished(
        curve=curve,
        at_target=at_target,
        final_train_accuracy=train_accuracy,
        batch_size=batch,
        seed=seed,
        accumulation_steps=k,
        peak_lr=schedule.peak_lr,
        warmup_updates=schedule.warmup_updates,
        budget_updates=schedule.budget_updates,
        train_size=train_size,
        val_size=len(splits.val),
        diverged_at_step=diverged_at,
        updates=updates,
        epochs=epochs,
        samples=samples,
        train_seconds=seconds,
        final_batch_size=schedule.batch_at(epochs),
        noise_scale=noise.b_simple,
        noise_scale_steps=noise.steps,
        probe_seconds=probe.seconds if probe else 0.0,
    )


def prepare_study(spec: ConvergeSpec, step: StepSpec) -> tuple[StepSpec, Splits]:
    """The data, at the model's input size, and the step with the data's classes (the model's
    head must match them); every batch checked. Bad input fails here, before any file."""
    from b3core.workloads.models import step_model

    _, model_input = step_model(step)
    if not model_input.is_image:
        shape = "x".join(map(str, model_input.shape))
        raise B3Error(
            f"b3 converge trains image classifiers on image data sets; {step.model} takes "
            f"{shape} {model_input.dtype} input"
        )
    splits = load_splits(spec, model_input.shape[-1])
    check_batches(spec, step, len(splits.train))
    return step.replace(num_classes=dataset_classes(splits)), splits


def run_study(
    spec: ConvergeSpec,
    step: StepSpec,
    splits: Splits,
    device: torch.device,
    log: ConvergeLog,
    on_run: Callable[[ConvergeRun], None] = lambda run: None,
) -> None:
    """Every (batch, seed) run that the log lacks, seeds outermost (a partial study still
    covers every batch); each is saved the moment it ends."""
    for seed in range(spec.seeds):
        for batch in spec.batch_sizes:
            if (batch, seed) in log.runs:
                continue
            try:
                run = run_one(spec, step, splits, batch, seed, device)
            except Exception as exc:  # noqa: BLE001 - only an out-of-memory is recorded
                if not is_out_of_memory(exc):
                    raise
                release_memory(device)
                run = _out_of_memory_run(batch, seed, step, exc)
            log.append(run)
            on_run(run)


def _out_of_memory_run(batch: int, seed: int, step: StepSpec, exc: BaseException) -> ConvergeRun:
    """A run whose batch did not fit: counted in its batch's row as one that missed."""
    message = str(exc).strip().splitlines()
    return ConvergeRun.finished(
        curve=(),
        at_target=None,
        batch_size=batch,
        seed=seed,
        accumulation_steps=step.accumulation_steps,
        out_of_memory=message[0][:200] if message else type(exc).__name__,
        peak_lr=math.nan,
        updates=0,
        noise_scale=None,
    )


LOG_NAME = "converge.jsonl"


class ConvergeLog:
    """A study's runs as they finish (studies/log_file.py), by (batch, seed)."""

    def __init__(self, path: Path, runs: dict[tuple[int, int], ConvergeRun]):
        self.path, self.runs = path, runs

    @staticmethod
    def identity(spec: ConvergeSpec, step: StepSpec) -> dict:
        """What must match for --resume to go on with this study rather than another."""
        settings = spec.to_dict()
        for name in ("seeds", "batch_sizes"):  # more seeds or sizes extend a study
            settings.pop(name)
        return {"converge": settings, "step": step.replace(batch_size=1).to_dict()}

    @classmethod
    def open(
        cls, out_dir: str | Path, spec: ConvergeSpec, step: StepSpec, *, resume: bool, machine: dict
    ) -> ConvergeLog:
        path = Path(out_dir) / LOG_NAME
        identity = json.loads(json.dumps(cls.identity(spec, step)))  # tuples as JSON has them
        if not path.exists():
            log_file.create(path, "converge-log", {"study": identity, "machine": machine})
            return cls(path, {})
        if not resume:
            raise B3Error(f"{path} already holds a study: pass --resume, or choose another --out")
        header, runs = read_log(path)
        if header["study"] != identity:
            raise B3Error(f"{path} holds a different study; resume with the same options")
        return cls(path, runs)

    def append(self, run: ConvergeRun) -> None:
        log_file.append(self.path, run.to_dict())
        self.runs[(run.batch_size, run.seed)] = run


@formats.upgrade("converge-log", 0)
def _from_b3_0_3(header: dict) -> dict:
    """b3 0.3 marked the header "b3_converge": 1."""
    if header.get("b3_converge") != 1:
        raise ValueError("not a b3 converge log")
    return {k: v for k, v in header.items() if k != "b3_converge"}


def read_log(path: str | Path) -> tuple[dict, dict[tuple[int, int], ConvergeRun]]:
    lines = log_file.read_lines(path, "convergence study")
    try:
        header = formats.upgraded("converge-log", json.loads(lines[0]), f"convergence log {path}")
        if "study" not in header:
            raise ValueError("not a b3 converge log")
        runs = {}
        for line in lines[1:]:
            run = ConvergeRun.from_dict(json.loads(line))
            runs[(int(run.batch_size), int(run.seed))] = run
    except (IndexError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise B3Error(f"convergence log {path} is corrupt: {exc}") from None
    return header, runs
