"""From a spec to a runnable step: the model, optimizer and one fixed batch on the device.

This is where a spec meets the registry and the device: an unknown model, an image size the
model does not take, or a precision the device cannot run fail here, as one-line B3Errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from b3core.errors import B3Error
from b3core.spec.step import StepSpec
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
from b3core.workloads.training import Trainer, prepare_training


def target_device(spec: StepSpec) -> torch.device:
    """The spec's device, checked to exist and to run the spec's precision; under torchrun,
    this rank's own GPU."""
    device = rank_device(resolve_device(spec.device))
    check_precision(spec.precision, device)
    return device


def check_buildable(spec: StepSpec) -> tuple[ModelSpec, ModelInput]:
    """Everything build_workload would refuse, without building: for commands that must fail
    before they write any file. Returns the model and the input the step feeds it."""
    model, model_input = step_model(spec)
    if spec.channels_last and len(model_input.shape) != 3:
        raise B3Error(f"--channels-last needs image input (CxHxW), not {spec.input_shape}")
    if spec.train_step and spec.mode == "inference":
        raise B3Error("--train-step times a training step; drop --inference")
    target_device(spec)
    return model, model_input


@dataclass
class Workload:
    """A built step: `call()` runs one training update (or one inference pass) on a batch that
    stays on the device, so that no data loading is ever timed."""

    spec: StepSpec
    trainer: Trainer
    call: Callable[[], object]
    info: WorkloadInfo


def build_workload(spec: StepSpec, device: torch.device, seed: int = 0) -> Workload:
    model, model_input = check_buildable(spec)
    trainer = prepare_training(spec, device, seed)
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
        origin=model.origin,
        package=model.package,
        version=model.version,
    )
    if spec.mode == "inference":
        trainer.model.eval()
        return Workload(spec, trainer, lambda: trainer.infer(inputs), info)
    # The same device batch serves every micro-batch: the arithmetic is identical, memory is not
    # spent on k copies of the input, and nothing is loaded inside the timed region.
    micro_batches = [(inputs, targets)] * spec.accumulation_steps
    return Workload(spec, trainer, lambda: trainer.step(micro_batches), info)
