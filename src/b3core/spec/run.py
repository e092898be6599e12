"""`b3 run`'s experiment (B3's): the training step it repeats and how the data reaches it.
Each field carries its command-line form, in B3's spellings too; torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from b3core.errors import B3Error
from b3core.spec.step import DATASETS, MIN_WARMUP, Record, StepSpec, Timing, option
from b3core.spec.validate import (
    parse_positive,
    parse_positive_int,
    require_choice,
    require_positive_int,
)


def _non_negative(text: str) -> int:
    return parse_positive_int("value", text, minimum=0)


def _integer(text: str) -> int:
    return parse_positive_int("value", text, minimum=-(2**63))


@dataclass(frozen=True)
class RunConfig(Record):
    """B3's experiment: the training step it repeats, and how the data reaches it."""

    step: StepSpec
    num_epochs: int = field(
        default=1, metadata=option("--num-epochs", parse=parse_positive, help="epochs per run")
    )
    dataset: str = field(
        default=DATASETS[0],
        metadata=option("--dataset", choices=DATASETS, help="synthetic (B3's shapes) or cifar10"),
    )
    data_dir: str | None = field(
        default=None,
        metadata=option("--data-dir", "--data-path", help="CIFAR-10 in torchvision's layout"),
    )
    train_size: int | None = field(
        default=None,
        metadata=option("--train-size", parse=parse_positive, help="fewer images than B3's"),
    )
    num_workers: int = field(
        default=0, metadata=option("--num-workers", parse=_non_negative, help="DataLoader workers")
    )
    seed: int = field(
        default=123,
        metadata=option(
            "--seed", "--random-seed", parse=_integer, help="the data's and the model's seed"
        ),
    )
    warmup: int = field(
        default=MIN_WARMUP,
        metadata=option("--warmup", parse=parse_positive, help="untimed steps per phase"),
    )

    def __post_init__(self) -> None:
        if self.step.mode != "train":
            raise B3Error("b3 run trains: its step spec must be a training step")
        require_positive_int("num epochs", self.num_epochs)
        Timing(warmup=self.warmup)  # the one warm-up check
        if self.train_size is not None:
            require_positive_int("train size", self.train_size)
        if self.num_workers < 0:
            raise B3Error(f"num workers must be 0 or more, got {self.num_workers}")
        require_choice("dataset", self.dataset, DATASETS)
        if self.dataset == "cifar10" and not self.data_dir:
            raise B3Error("--dataset cifar10 needs --data-dir PATH (b3 never downloads data)")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "step": self.step.to_dict()}
