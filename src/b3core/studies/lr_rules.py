"""Learning rate and accumulation for a new batch size.

Linear scaling (Goyal et al. 2017): lr = base_lr * B / B_ref, with a gradual warm-up (5 epochs
in the paper). Square-root scaling, common with Adam (Hoffer et al. 2017): lr = base_lr *
sqrt(B / B_ref). Either is a starting point: validate accuracy after changing the batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from b3core.errors import B3Error
from b3core.spec.step import Record, option
from b3core.spec.validate import parse_number, parse_positive, require_choice

RULES = ("linear", "sqrt")
GOYAL_WARMUP_EPOCHS = 5


@dataclass(frozen=True)
class LrRequest(Record):
    """A reference learning rate and the batch it was tuned at, to scale to a new batch."""

    base_lr: float | None = field(
        default=None,
        metadata=option("--base-lr", parse=parse_number, help="reference learning rate"),
    )
    base_batch: int = field(
        default=128,
        metadata=option("--base-batch", parse=parse_positive, help="its batch size"),
    )
    rule: str = field(
        default=RULES[0], metadata=option("--lr-rule", choices=RULES, help="scaling rule")
    )
    dataset_size: int | None = field(
        default=None,
        metadata=option(
            "--dataset-size", parse=parse_positive, help="samples per epoch, for warm-up steps"
        ),
    )


def scale_lr(base_lr: float, base_batch: int, batch: int, rule: str = "linear") -> float:
    if base_lr <= 0 or base_batch < 1 or batch < 1:
        raise B3Error("learning-rate scaling needs a positive base lr and positive batch sizes")
    ratio = batch / base_batch
    if require_choice("learning-rate rule", rule, RULES) == "sqrt":
        return base_lr * math.sqrt(ratio)
    return base_lr * ratio


def warmup_steps(
    batch: int, base_batch: int, dataset_size: int, epochs: float = GOYAL_WARMUP_EPOCHS
) -> int:
    """Optimizer steps of linear warm-up: `epochs` epochs when the batch grew, none otherwise."""
    if batch <= base_batch:
        return 0
    return math.ceil(epochs * dataset_size / batch)


def warmup_lr(step: int, warmup: int, peak_lr: float, start_fraction: float = 0.0) -> float:
    """The learning rate at `step` (0-based) of a linear ramp to peak_lr over `warmup` steps."""
    if warmup <= 0 or step >= warmup:
        return peak_lr
    start = peak_lr * start_fraction
    return start + (peak_lr - start) * (step + 1) / warmup


def accumulation_for(target_batch: int, micro_batch: int, world_size: int = 1) -> tuple[int, int]:
    """Accumulation steps k so that micro_batch * k * world_size reaches target_batch;
    returns (k, the effective batch that k gives)."""
    if min(target_batch, micro_batch, world_size) < 1:
        raise B3Error("accumulation needs positive batch sizes and world size")
    k = math.ceil(target_batch / (micro_batch * world_size))
    return k, micro_batch * k * world_size
