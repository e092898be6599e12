"""The training and inference steps that b3 times.

A training step is one optimizer update: k micro-batches of forward, loss and backward, then the
optimizer step, then the gradients set to None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from b3core.spec.step import OPTIMIZERS
from b3core.spec.validate import require_choice
from b3core.workloads.info import CAUSAL_LM, CLASSIFICATION

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
T = TypeVar("T")


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A causal language model's loss: cross-entropy of (B, L, vocab) logits against the next
    token at each of the B·L positions, averaged over them."""
    return nn.functional.cross_entropy(logits.flatten(0, -2), targets.flatten())


LOSSES: dict[str, LossFn] = {
    CLASSIFICATION: nn.functional.cross_entropy,
    CAUSAL_LM: next_token_loss,
}


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if require_choice("optimizer", name, OPTIMIZERS) == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def windows(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Group micro-batches into accumulation windows; the last one may be shorter."""
    window: list[T] = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Batch],
    *,
    loss_fn: LossFn = nn.functional.cross_entropy,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    no_sync: Callable[[], ContextManager] | None = None,
    after_backward: Callable[[int, float], None] | None = None,
    mark: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """One optimizer update over an accumulation window of micro-batches.

    Each micro-batch's mean loss is weighted by its share of the window's samples, so that the
    update equals one step on the concatenated batch even when micro-batches differ in size.
    `no_sync` (a DDP model's) skips the gradient all-reduce on every micro-batch but the last.
    `after_backward(i, weight)` runs after micro-batch i's backward (weight: its share), before
    the optimizer step: the gradient noise scale's probe. `mark(phase)` is called as each
    phase ends ("forward" with the loss, "backward", "optimizer"): the phase clock's
    (measuring/phases.py). Returns the window's mean loss as a device tensor, so that no host
    sync happens here.
    """
    mark = mark or _no_mark
    window_samples = sum(len(targets) for _, targets in micro_batches)
    last = len(micro_batches) - 1
    total_loss = None
    for i, (inputs, targets) in enumerate(micro_batches):
        sync_context = no_sync() if (no_sync is not None and i < last) else contextlib.nullcontext()
        with sync_context:
            weight = len(targets) / window_samples
            with autocast():
                loss = loss_fn(model(inputs), targets)
                if last:  # a window of one needs no weighting
                    loss = loss * weight
            mark("forward")
            (scaler.scale(loss) if scaler is not None else loss).backward()
            mark("backward")
        if after_backward is not None:
            after_backward(i, weight)
        total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)  # once, just before the step (gradient clipping would go here)
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark("optimizer")
    return total_loss


def _no_mark(phase: str) -> None:
    pass


def inference_step(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """A forward pass in eval mode under inference_mode (the caller sets eval())."""
    with torch.inference_mode(), autocast():
        return model(inputs)


@dataclass
class Trainer:
    """A model on its device with its optimizer, loss scaler and autocast: what every training
    and inference loop in b3 runs on. It counts attempted and applied optimizer updates; they
    differ when GradScaler skips a step whose gradients overflowed.

    `custom_step` is the user's own training step (workloads/user_step.py), called in place of
    b3's; `counts_updates` is False when that step does not use b3's optimizer."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], ContextManager]
    memory_format: torch.memory_format
    loss_fn: LossFn = nn.functional.cross_entropy
    no_sync: Callable[[], ContextManager] | None = None  # a DDP model's: skip the all-reduce
    after_backward: Callable[[int, float], None] | None = None  # train_step's probe hook
    custom_step: Callable[[Sequence[Batch]], object] | None = None
    counts_updates: bool = True
    attempted_updates: int = 0
    applied_updates: int = 0

    def __post_init__(self) -> None:
        # Runs only when optimizer.step() really runs. GradScaler decides that with a host read
        # of its inf check, so the count is current when step() returns: no extra sync needed.
        self.optimizer.register_step_post_hook(self._count_applied)

    def _count_applied(self, *_) -> None:
        self.applied_updates += 1

    @property
    def skipped_updates(self) -> int:
        return self.attempted_updates - self.applied_updates

    def step(
        self, micro_batches: Sequence[Batch], mark: Callable[[str], None] | None = None
    ) -> object:
        """One optimizer update; `mark` as train_step's (b3's own step only)."""
        if self.counts_updates:
            self.attempted_updates += 1
        if self.custom_step is not None:
            return self.custom_step(micro_batches)
        return train_step(
            self.model,
            self.optimizer,
            micro_batches,
            loss_fn=self.loss_fn,
            autocast=self.autocast,
            scaler=self.scaler,
            no_sync=self.no_sync,
            after_backward=self.after_backward,
            mark=mark,
        )

    def infer(self, inputs: torch.Tensor) -> torch.Tensor:
        return inference_step(self.model, inputs, autocast=self.autocast)
