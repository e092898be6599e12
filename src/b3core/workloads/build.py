"""From a spec to a runnable step: the model, optimizer and one fixed batch on the device.

This is where a spec meets the registry and the device: an unknown model, an image size the
model does not take, or a precision the device cannot run fail here, as one-line B3Errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from b3core.errors import B3Error
from b3core.spec.step import StepSpec
from b3core.workloads.checkpointing import apply_checkpointing
from b3core.workloads.data import synthetic_batch
from b3core.workloads.devices import check_precision, rank_device, resolve_device
from b3core.workloads.info import WorkloadInfo
from b3core.workloads.models import (
    ModelInput,
    ModelSpec,
    count_parameters,
    has_batch_dependent_layers,
    step_model,
)
from b3core.workloads.precision import autocast_factory, configure_math_mode, make_grad_scaler
from b3core.workloads.training import LOSSES, Trainer, make_optimizer
from b3core.workloads.user_step import bind_custom_step, load_loss


@dataclass(frozen=True)
class ResolvedStep:
    """A spec resolved once against the registry and the machine: its device (checked to exist
    and to run the spec's precision; under torchrun this rank's own GPU), its model and the
    input that the step feeds it. The build takes it as it is."""

    spec: StepSpec
    device: torch.device
    model: ModelSpec
    model_input: ModelInput


def resolve(spec: StepSpec) -> ResolvedStep:
    """Everything the build would refuse, found without building: commands call it before they
    write any file or start any rank."""
    model, model_input = step_model(spec)
    if spec.channels_last and len(model_input.shape) != 3:
        raise B3Error(f"--channels-last needs image input (CxHxW), not {spec.input_shape}")
    if spec.train_step and spec.mode == "inference":
        raise B3Error("--train-step times a training step; drop --inference")
    device = rank_device(resolve_device(spec.device))
    check_precision(spec.precision, device)
    return ResolvedStep(spec, device, model, model_input)


def prepare_training(step: ResolvedStep, seed: int = 0) -> Trainer:
    """The step's seeded model, optimizer, loss, precision settings and (if named) the user's
    own step, ready on the device (in train mode)."""
    spec, device = step.spec, step.device
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = spec.cudnn_benchmark  # autotuning runs in the warm-up
    configure_math_mode(spec.precision, device)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model = step.model.build(step.model_input)
    model = model.to(device=device, memory_format=memory_format).train()
    model = apply_checkpointing(model, spec.activation_checkpointing, spec.model)
    if spec.compile:
        model = torch.compile(model)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    trainer = Trainer(
        model=model,
        optimizer=make_optimizer(spec.optimizer, model.parameters(), spec.lr),
        scaler=make_grad_scaler(spec.precision, device),
        autocast=autocast_factory(spec.precision, device),
        memory_format=memory_format,
        no_sync=getattr(model, "no_sync", None),
    )
    trainer.loss_fn = load_loss(spec.loss) if spec.loss else LOSSES[step.model_input.task]
    if spec.train_step:
        bind_custom_step(trainer, spec)
    return trainer


@dataclass
class Workload:
    """A built step: `call()` runs one training update (or one inference pass) on a batch that
    stays on the device, so that no data loading is ever timed."""

    spec: StepSpec
    trainer: Trainer
    call: Callable[[], object]
    info: WorkloadInfo
    forward: Callable[[], object] | None = None  # one micro-batch's forward, as the step's
    # the training step with its phases marked (train_step's `mark`); None for inference
    marked_call: Callable[[Callable[[str], None]], object] | None = None


def build_workload(step: ResolvedStep, seed: int = 0) -> Workload:
    spec, device, model, model_input = step.spec, step.device, step.model, step.model_input
    trainer = prepare_training(step, seed)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        seed += torch.distributed.get_rank()  # each rank its own shard of data
    inputs, targets = synthetic_batch(
        spec.batch_size, model_input, device, channels_last=spec.channels_last, seed=seed
    )
    info = WorkloadInfo(
        parameters=count_parameters(trainer.model),
        input_shape=model_input.shape,
        num_classes=model_input.num_classes,
        batch_dependent_layers=has_batch_dependent_layers(trainer.model),
        input_dtype=model_input.dtype,
        task=model_input.task,
        origin=model.origin,
        package=model.package,
        version=model.version,
    )

    def forward():
        with trainer.autocast():
            return trainer.model(inputs)

    if spec.mode == "inference":
        trainer.model.eval()
        return Workload(spec, trainer, lambda: trainer.infer(inputs), info, forward)
    # The same device batch serves every micro-batch: the arithmetic is identical, memory is not
    # spent on k copies of the input, and nothing is loaded inside the timed region.
    micro_batches = [(inputs, targets)] * spec.accumulation_steps
    return Workload(
        spec,
        trainer,
        lambda: trainer.step(micro_batches),
        info,
        forward,
        lambda mark: trainer.step(micro_batches, mark=mark),
    )
