"""From a spec to a runnable step: the model, optimizer and one fixed batch on the device.

This is where a spec meets the registry and the device: an unknown model, an image size the
model does not take, or a precision the device cannot run fail here, as one-line B3Errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from b3core.spec.step import StepSpec
from b3core.workloads.data import synthetic_batch
from b3core.workloads.devices import check_precision, resolve_device
from b3core.workloads.info import WorkloadInfo
from b3core.workloads.models import count_parameters, get_model_spec, has_batch_dependent_layers
from b3core.workloads.training import Trainer, prepare_training


def target_device(spec: StepSpec) -> torch.device:
    """The spec's device, checked to exist and to run the spec's precision."""
    device = resolve_device(spec.device)
    check_precision(spec.precision, device)
    return device


def check_buildable(spec: StepSpec) -> None:
    """Everything build_workload would refuse, without building: for commands that must fail
    before they write any file."""
    model = get_model_spec(spec.model)
    if spec.image_size is not None:
        model.check_image_size(spec.image_size)
    target_device(spec)


@dataclass
class Workload:
    """A built step: `call()` runs one training update (or one inference pass) on a batch that
    stays on the device, so that no data loading is ever timed."""

    spec: StepSpec
    trainer: Trainer
    call: Callable[[], object]
    info: WorkloadInfo


def build_workload(spec: StepSpec, device: torch.device, seed: int = 0) -> Workload:
    check_buildable(spec)
    trainer = prepare_training(spec, device, seed)
    shape = get_model_spec(spec.model).input_shape(spec.image_size)
    num_classes = spec.num_classes or get_model_spec(spec.model).num_classes
    inputs, targets = synthetic_batch(
        spec.batch_size, shape, num_classes, device, channels_last=spec.channels_last, seed=seed
    )
    info = WorkloadInfo(
        parameters=count_parameters(trainer.model),
        input_shape=shape,
        num_classes=num_classes,
        batch_dependent_layers=has_batch_dependent_layers(trainer.model),
    )
    if spec.mode == "inference":
        trainer.model.eval()
        return Workload(spec, trainer, lambda: trainer.infer(inputs), info)
    # The same device batch serves every micro-batch: the arithmetic is identical, memory is not
    # spent on k copies of the input, and nothing is loaded inside the timed region.
    micro_batches = [(inputs, targets)] * spec.accumulation_steps
    return Workload(spec, trainer, lambda: trainer.step(micro_batches), info)
