"""What a convergence study is: the one declaration of its settings, defaults and choices.

A study trains a model at several batch sizes, from several seeds each, until a target
validation accuracy (or a budget of epochs), and records how many steps, samples and seconds
the target took. Its batch sizes are batches per optimizer update: with accumulation each is
split into `accumulation_steps` micro-batches. The learning rate (StepSpec's `--lr`, also
`--base-lr`) is the rate at `base_batch`; the rule scales it for the other sizes. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from b3core.errors import B3Error
from b3core.spec.sizes import parse_batch_sizes
from b3core.spec.step import Record, option, parse_number
from b3core.spec.validate import parse_positive_int, parse_positive_number

CONVERGE_DATASETS = ("digits", "cifar10", "imagefolder")  # read from disk; never downloaded
LR_RULES = ("none", "linear", "sqrt")  # none: every batch at the base rate
GOYAL_WARMUP_EPOCHS = 5.0  # Goyal et al. 2017: 5 epochs of linear warm-up when the batch grew
# The study's own defaults for the step: a small CNN with BatchNorm, and SGD with momentum at
# a rate that trains it on digits at batch 16
DEFAULT_MODEL = "small_bn_cnn"
DEFAULT_OPTIMIZER = "sgd"
DEFAULT_BASE_LR = 0.05
DEFAULT_TARGET = 0.9
DEFAULT_MAX_EPOCHS = 10.0
DEFAULT_EVALS_PER_EPOCH = 8
CLOCK = "each update between two device syncs; loading, evaluation and probes excluded"


def _fraction_of_one(text: str) -> float:
    value = parse_number(text)
    if not 0 < value <= 1:
        raise B3Error(f"a target accuracy is a fraction in (0, 1], got {text!r}")
    return value


def _batch_sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(parse_batch_sizes(text))
    if not sizes:
        raise B3Error("give at least one batch size")
    return sizes


def _epochs_list(text: str) -> tuple[float, ...]:
    epochs = tuple(
        parse_positive_number(part, "decay epoch") for part in text.split(",") if part.strip()
    )
    if list(epochs) != sorted(set(epochs)):
        raise B3Error(f"decay epochs must increase, got {text!r}")
    return epochs


@dataclass(frozen=True)
class ConvergeSpec(Record):
    """A convergence study's settings (the model, precision, optimizer and accumulation are the
    StepSpec's)."""

    batch_sizes: tuple[int, ...] = field(
        default=(),
        metadata=option(
            "--batch-sizes",
            parse=_batch_sizes,
            help="batches per optimizer update, e.g. 16,64,256",
        ),
    )
    dataset: str = field(
        default="digits",
        metadata=option(
            "--dataset",
            choices=CONVERGE_DATASETS,
            help="digits: scikit-learn's 1,797 8x8 images, bundled (default); cifar10 or "
            "imagefolder: read from --data-dir, never downloaded",
        ),
    )
    data_dir: str | None = field(
        default=None, metadata=option("--data-dir", help="where cifar10 or the image folder is")
    )
    target_accuracy: float = field(
        default=DEFAULT_TARGET,
        metadata=option(
            "--target-accuracy",
            parse=_fraction_of_one,
            help=f"validation accuracy to reach (default {DEFAULT_TARGET})",
        ),
    )
    max_epochs: float = field(
        default=DEFAULT_MAX_EPOCHS,
        metadata=option(
            "--max-epochs",
            parse=parse_positive_number,
            help=f"epochs of the base batch before a run gives up (default {DEFAULT_MAX_EPOCHS:g})",
        ),
    )
    seeds: int = field(
        default=3,
        metadata=option(
            "--seeds",
            parse=lambda text: parse_positive_int("--seeds", text),
            help="runs per batch size, from seeds 0..N-1 (default 3)",
        ),
    )
    base_batch: int | None = field(
        default=None,
        metadata=option(
            "--base-batch",
            parse=lambda text: parse_positive_int("--base-batch", text),
            help="the batch at which --lr is right (default: the smallest batch size)",
        ),
    )
    lr_rule: str = field(
        default="none",
        metadata=option(
            "--lr-rule",
            choices=LR_RULES,
            help="scale the rate with the batch: linear (Goyal et al.), sqrt, or none (default)",
        ),
    )
    warmup_epochs: float = field(
        default=GOYAL_WARMUP_EPOCHS,
        metadata=option(
            "--warmup-epochs",
            parse=lambda text: parse_positive_number(text, allow_zero=True),
            help="linear warm-up from the base rate to the scaled one, when the rule raised "
            f"it (default {GOYAL_WARMUP_EPOCHS:g}, Goyal et al.)",
        ),
    )
    ghost_batch: int | None = field(
        default=None,
        metadata=option(
            "--ghost-batch",
            parse=lambda text: parse_positive_int("--ghost-batch", text),
            metavar="N",
            help="Ghost BatchNorm: batch statistics over virtual batches of N (Hoffer et al.)",
        ),
    )
    regime_adaptation: bool = field(
        default=False,
        metadata=option(
            "--regime-adaptation",
            action="store_true",
            help="give every batch as many updates as the base batch gets (Hoffer et al.)",
        ),
    )
    decay_epochs: tuple[float, ...] = field(
        default=(),
        metadata=option(
            "--decay-epochs",
            parse=_epochs_list,
            metavar="E1,E2",
            help="epochs at which the rate drops by --decay-factor (default: no decay)",
        ),
    )
    decay_factor: float = field(
        default=0.1,
        metadata=option(
            "--decay-factor",
            parse=parse_positive_number,
            help="the rate's factor at each decay epoch (default 0.1)",
        ),
    )
    grow_batch: bool = field(
        default=False,
        metadata=option(
            "--grow-batch",
            action="store_true",
            help="at each decay epoch grow the batch by 1/--decay-factor instead of dropping "
            "the rate (Smith et al.)",
        ),
    )
    evals_per_epoch: int = field(
        default=DEFAULT_EVALS_PER_EPOCH,
        metadata=option(
            "--evals-per-epoch",
            parse=lambda text: parse_positive_int("--evals-per-epoch", text),
            help="validation passes per epoch, at most one per update "
            f"(default {DEFAULT_EVALS_PER_EPOCH})",
        ),
    )
    stop_at_target: bool = field(
        default=False,
        metadata=option(
            "--stop-at-target",
            action="store_true",
            help="end a run when it reaches the target (default: train the whole budget, for "
            "the final accuracy and the generalization gap)",
        ),
    )

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise B3Error("a convergence study needs at least one batch size (--batch-sizes)")
        if self.dataset != "digits" and not self.data_dir:
            raise B3Error(f"--dataset {self.dataset} is read from disk: give --data-dir")
        if self.grow_batch and not self.decay_epochs:
            raise B3Error("--grow-batch grows the batch at --decay-epochs: give them")
        if self.decay_factor >= 1:
            raise B3Error(f"--decay-factor must be below 1, got {self.decay_factor:g}")

    @property
    def reference_batch(self) -> int:
        return self.base_batch or min(self.batch_sizes)
