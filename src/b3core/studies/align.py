"""`b3 align`: is an aligned batch size faster per sample than its neighbours? An answer, not an
absence of evidence.

The sizes (B-1, B, B+1 for each B asked, and B-8, B+8 with multiples of 8) are units of the
interleaved engine (studies/interleaved.py): timed in shared fresh processes, each aligned size
compared with each neighbour, decided sequentially with the error rate of all the verdicts
together held at alpha, each ending faster, slower, equivalent within the margin, or
inconclusive with what it could not rule out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from b3core.errors import B3Error
from b3core.spec.step import StepSpec, option
from b3core.studies.interleaved import (  # noqa: F401 - align's verdicts and exit codes
    EXIT_CODES,
    INCONCLUSIVE,
    OUT_OF_MEMORY_EXIT,
    Comparison,
    InterleavedRun,
    InterleaveSettings,
    InterleaveWorker,
    fresh_worker,
    run_interleaved,
)

MULTIPLE = 8


@dataclass(frozen=True)
class AlignSettings(InterleaveSettings):
    """How `b3 align` runs and judges: the interleaved engine's settings, and the neighbours."""

    multiples_of_8: bool = field(
        default=False,
        metadata=option(
            "--multiples-of-8", action="store_true", help="also compare each B with B-8 and B+8"
        ),
    )


def comparisons_around(
    around: Sequence[int], multiples_of_8: bool = False
) -> list[tuple[int, int]]:
    """(aligned, neighbour) pairs: B against B-1 and B+1, and against B-8 and B+8 if asked."""
    pairs: list[tuple[int, int]] = []
    for size in around:
        if size < 2:
            raise B3Error(f"--around {size}: there is no batch size B-1 below it")
        steps = (1, MULTIPLE) if multiples_of_8 and size > MULTIPLE else (1,)
        for step in steps:
            for neighbour in (size - step, size + step):
                if (size, neighbour) not in pairs:
                    pairs.append((size, neighbour))
    return pairs


class NeighbourVerdict(Comparison):
    """An aligned size's samples/s over a neighbour's (units named by their batch sizes)."""

    def __init__(self, aligned: int, neighbour: int, margin: float) -> None:
        super().__init__(str(aligned), str(neighbour), margin)

    @property
    def aligned(self) -> int:
        return int(self.first)

    @property
    def neighbour(self) -> int:
        return int(self.second)

    def to_dict(self) -> dict:
        return {"aligned": self.aligned, "neighbour": self.neighbour, **super().to_dict()}


@dataclass
class AlignRun(InterleavedRun):
    """The interleaved run of one case's sizes: `spec` with each size as its batch."""

    spec: StepSpec | None = None

    @classmethod
    def around(cls, spec: StepSpec, settings: AlignSettings, pairs) -> AlignRun:
        sizes = sorted({size for pair in pairs for size in pair})
        units = {str(size): spec.replace(batch_size=size) for size in sizes}
        comparisons = [NeighbourVerdict(a, n, settings.margin) for a, n in pairs]
        return cls(units, settings, comparisons, spec=spec)

    def unit_label(self, name: str) -> str:
        return f"batch {name}"

    @property
    def sizes(self) -> list[int]:
        return [int(name) for name in self.units]

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "sizes": self.sizes, **super().to_dict()}


def run_align(
    spec: StepSpec,
    settings: AlignSettings,
    pairs: Sequence[tuple[int, int]],
    start_worker: Callable[[], InterleaveWorker],
    clock: Callable[[], float] = time.monotonic,
    out: AlignRun | None = None,
) -> AlignRun:
    """Epochs of fresh workers until every comparison is decided or the time is up. `out`
    (made here unless given) fills as blocks arrive, so an interrupt keeps what was timed."""
    out = out or AlignRun.around(spec, settings, pairs)
    return run_interleaved(out, start_worker, clock)
