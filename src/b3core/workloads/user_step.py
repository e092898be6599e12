"""The user's own loss and training step, named `module:function`.

A custom step is written the way the user's training loop is, and takes by name whichever of
STEP_ARGUMENTS it needs. b3 still builds the model, optimizer, GradScaler and the batch on the
device, runs the warm-up, the clock and the memory tracking; what happens inside the step
(zero_grad, forward, loss, backward, optimizer.step, the scaler's calls) is the user's. If the
step does not take `autocast`, b3 runs the whole step under its autocast for fp16/bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from b3core.errors import B3Error
from b3core.spec.step import StepSpec
from b3core.workloads.training import Batch, LossFn, Trainer
from b3core.workloads.user_code import declared_parameters, load_callable, required_parameters

STEP_ARGUMENTS = (
    "model",
    "optimizer",
    "batch",  # (inputs, targets) of the first micro-batch
    "inputs",
    "targets",
    "micro_batches",  # the accumulation window: a list of (inputs, targets)
    "loss_fn",
    "autocast",  # a function returning b3's autocast context for the precision
    "scaler",  # fp16's GradScaler, else None
)


def load_loss(path: str) -> LossFn:
    return load_callable(path, "--loss")


def bind_custom_step(trainer: Trainer, spec: StepSpec) -> None:
    """Make the user's step the trainer's training step, or say in one line why it cannot be."""
    fn = load_callable(spec.train_step, "--train-step")
    what = f"--train-step {spec.train_step}"
    unknown = [name for name in required_parameters(fn) if name not in STEP_ARGUMENTS]
    if unknown:
        raise B3Error(
            f"{what} takes {', '.join(unknown)}, which b3 does not supply; name its "
            f"parameters from {', '.join(STEP_ARGUMENTS)}"
        )
    names = declared_parameters(fn)

    def takes(name: str) -> bool:
        return names is None or name in names

    if not any(takes(name) for name in ("batch", "inputs", "micro_batches")):
        raise B3Error(f"{what} takes none of batch, inputs, micro_batches: what does it train on?")
    if spec.mode == "train" and spec.accumulation_steps > 1 and not takes("micro_batches"):
        raise B3Error(f"{what} must take micro_batches to accumulate over several micro-batches")
    if spec.precision == "fp16" and not takes("scaler"):
        raise B3Error(f"{what} must take scaler for fp16 (its GradScaler); or time fp32/bf16")
    own_autocast = takes("autocast")

    def step(micro_batches: Sequence[Batch]) -> object:
        inputs, targets = micro_batches[0]
        available = {
            "model": trainer.model,
            "optimizer": trainer.optimizer,
            "batch": micro_batches[0],
            "inputs": inputs,
            "targets": targets,
            "micro_batches": list(micro_batches),
            "loss_fn": trainer.loss_fn,
            "autocast": trainer.autocast,
            "scaler": trainer.scaler,
        }
        context = contextlib.nullcontext() if own_autocast else trainer.autocast()
        with context:
            return fn(**{k: v for k, v in available.items() if takes(k)})

    trainer.custom_step = step
    trainer.counts_updates = takes("optimizer")
