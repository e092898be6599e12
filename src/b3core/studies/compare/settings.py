"""How a comparison runs and is judged: one declaration of each setting, its default and its
command-line form. No torch, so that `b3 compare --help` and saved comparisons stay light."""

from __future__ import annotations

from dataclasses import dataclass, field

from b3core.spec.step import MIN_WARMUP, Record, option
from b3core.spec.validate import parse_fraction, parse_positive_int, parse_seconds

REGRESSION, NO_REGRESSION, FASTER, INCONCLUSIVE = (
    "regression",
    "no regression",
    "faster",
    "inconclusive",
)
NOT_COMPARED = "not compared"  # a case one side could not run (it did not fit, say)
EXIT_CODES = {NO_REGRESSION: 0, FASTER: 0, REGRESSION: 1, NOT_COMPARED: 2, INCONCLUSIVE: 3}
INTERRUPTED = 130  # Ctrl-C or SIGTERM, as in every b3 command


def exit_code(verdict: str, fail_on_inconclusive: bool = False) -> int:
    code = EXIT_CODES[verdict]
    return EXIT_CODES[REGRESSION] if verdict == INCONCLUSIVE and fail_on_inconclusive else code


def exit_codes_text() -> str:
    """The exit codes, as --help says them."""
    said = ", ".join(f"{code} {verdict}" for verdict, code in EXIT_CODES.items())
    return (
        f"Exit codes: {said} ({EXIT_CODES[REGRESSION]} with --fail-on-inconclusive), "
        f"{EXIT_CODES[NOT_COMPARED]} also for bad input, {INTERRUPTED} interrupted."
    )


DEFAULT_MAX_TIME_S = 160.0  # with the workers' start, a verdict within 3 minutes
DEFAULT_THRESHOLD = 0.02
DEFAULT_ALPHA = 0.05
# Two processes running the same code can differ for as long as they live (their heap's
# history above all): fresh workers for every epoch turn that into noise that the spread of the
# epochs measures, instead of a bias that no number of blocks from one pair could reveal. Short
# epochs, many of them, measure it best (docs/results/vm-cpu/process-effect-*.md).
DEFAULT_EPOCH_S = 1.0
DEFAULT_MIN_ROUNDS = 5  # the first look; fewer rounds leave t too few degrees of freedom
FORK, EXEC = "fork", "exec"
# fork: each side's server imports once and forks a fresh worker per epoch (milliseconds);
# exec: a fresh interpreter per epoch (seconds of imports); data-parallel worlds always exec
WORKER_STARTS = (FORK, EXEC)
# glibc's malloc raises its mmap threshold as a process frees large blocks and trims its heap
# as it sees fit, so two processes of the same code page-fault differently for their whole
# lives: fixed thresholds cut the spread between fresh processes by half or more
# (docs/results/vm-cpu/process-effect-*.md). A user's own MALLOC_* settings win.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


@dataclass(frozen=True)
class CompareSettings(Record):
    """How a comparison is run and judged; clock and warm-up are Timing's options."""

    max_time_s: float = field(
        default=DEFAULT_MAX_TIME_S,
        metadata=option(
            "--max-time",
            parse=parse_seconds,
            metavar="SECONDS",
            help="seconds per case, warm-up included, before an undecided case is called "
            f"inconclusive (default {DEFAULT_MAX_TIME_S:g})",
        ),
    )
    threshold: float = field(
        default=DEFAULT_THRESHOLD,
        metadata=option(
            "--threshold",
            parse=parse_fraction,
            help=f"the slowdown that matters, e.g. 0.02 or 2%% (default {DEFAULT_THRESHOLD:g})",
        ),
    )
    alpha: float = field(
        default=DEFAULT_ALPHA,
        metadata=option(
            "--alpha",
            parse=parse_fraction,
            help=f"error rate of a verdict, over all looks (default {DEFAULT_ALPHA:g})",
        ),
    )
    epoch_s: float = field(
        default=DEFAULT_EPOCH_S,
        metadata=option(
            "--epoch-time",
            parse=parse_seconds,
            metavar="SECONDS",
            help="seconds of interleaved blocks per pair of worker processes, before both are "
            f"replaced by fresh ones (default {DEFAULT_EPOCH_S:g})",
        ),
    )
    min_rounds: int = field(
        default=DEFAULT_MIN_ROUNDS,
        metadata=option(
            "--min-rounds",
            parse=lambda text: parse_positive_int("value", text, 2),
            help="rounds (fresh servers, or fresh interpreters) before the first look (at "
            f"least 2; default {DEFAULT_MIN_ROUNDS})",
        ),
    )
    workers: str = field(
        default=FORK,
        metadata=option(
            "--workers",
            choices=WORKER_STARTS,
            help="how each epoch's fresh worker starts: forked by the side's server, which "
            "imported torch and the side's code once, or as a fresh interpreter (default "
            f"{FORK})",
        ),
    )
    fixed_malloc: bool = field(
        default=True,
        metadata=option(
            "--dynamic-malloc",
            action="store_false",
            help="leave glibc's malloc thresholds dynamic in the workers (fixed by default: "
            "they made fresh processes of the same code differ)",
        ),
    )
    seed: int = field(
        default=0, metadata=option("--seed", type=int, help="seed of the orders drawn at random")
    )
    clock: str = "blocked"
    warmup: int = MIN_WARMUP
    # each forked worker's heap and mappings shifted at random (docs/results: process effect)
    shift_layout: bool = True

    def worker_environment(self) -> dict[str, str]:
        """What the workers' environment adds to the parent's."""
        return dict(FIXED_MALLOC) if self.fixed_malloc else {}
