"""How a comparison runs and is judged: one declaration of each setting, its default and its
command-line form. No torch, so that `b3 compare --help` and saved comparisons stay light."""

from __future__ import annotations

from dataclasses import dataclass, field

from b3core.errors import B3Error
from b3core.spec.step import MIN_WARMUP, Record, option, parse_number
from b3core.spec.validate import parse_positive_int, parse_positive_number

DEFAULT_MAX_TIME_S = 160.0  # with the workers' start, a verdict within 3 minutes
DEFAULT_THRESHOLD = 0.02
DEFAULT_ALPHA = 0.05
# Two processes running the same code can differ by a few percent for as long as they live
# (memory layout and page backing, thread placement): 3-4% between processes on a 2-core VM,
# 25% for a 4 ms step. Fresh workers for every epoch turn that into noise that the spread of
# the epochs measures, instead of a bias that no number of blocks from one pair could reveal.
DEFAULT_EPOCH_S = 3.0
DEFAULT_MIN_EPOCHS = 5  # the first look; fewer epochs leave t too few degrees of freedom


def _fraction(text: str) -> float:
    """0.02 or 2%: a fraction strictly between 0 and 1."""
    text = text.strip()
    value = parse_number(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value < 1:
        raise B3Error(f"value must be a fraction between 0 and 1 (or a percentage), got {text!r}")
    return value


def _seconds(text: str) -> float:
    return parse_positive_number(text, "number of seconds")


@dataclass(frozen=True)
class CompareSettings(Record):
    """How a comparison is run and judged; clock and warm-up are Timing's options."""

    max_time_s: float = field(
        default=DEFAULT_MAX_TIME_S,
        metadata=option(
            "--max-time",
            parse=_seconds,
            metavar="SECONDS",
            help="seconds per case, warm-up included, before an undecided case is called "
            f"inconclusive (default {DEFAULT_MAX_TIME_S:g})",
        ),
    )
    threshold: float = field(
        default=DEFAULT_THRESHOLD,
        metadata=option(
            "--threshold",
            parse=_fraction,
            help=f"the slowdown that matters, e.g. 0.02 or 2%% (default {DEFAULT_THRESHOLD:g})",
        ),
    )
    alpha: float = field(
        default=DEFAULT_ALPHA,
        metadata=option(
            "--alpha",
            parse=_fraction,
            help=f"error rate of a verdict, over all looks (default {DEFAULT_ALPHA:g})",
        ),
    )
    epoch_s: float = field(
        default=DEFAULT_EPOCH_S,
        metadata=option(
            "--epoch-time",
            parse=_seconds,
            metavar="SECONDS",
            help="seconds of interleaved blocks per pair of worker processes, before both are "
            f"replaced by fresh ones (default {DEFAULT_EPOCH_S:g})",
        ),
    )
    min_epochs: int = field(
        default=DEFAULT_MIN_EPOCHS,
        metadata=option(
            "--min-epochs",
            parse=lambda text: parse_positive_int("value", text, 2),
            help=f"epochs before the first look (at least 2; default {DEFAULT_MIN_EPOCHS})",
        ),
    )
    seed: int = field(default=0, metadata=option("--seed", type=int, help="block order's seed"))
    clock: str = "blocked"
    warmup: int = MIN_WARMUP
