"""How `b3 find-max-batch` searches: the one declaration of its settings, their defaults and
their command-line forms; torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field

from b3core.errors import B3Error
from b3core.spec.step import Record, option
from b3core.spec.validate import (
    parse_number,
    parse_positive,
    require_choice,
)

SEARCHES = ("guided", "bisect")


@dataclass(frozen=True)
class FinderSettings(Record):
    start: int = field(
        default=1, metadata=option("--start", parse=parse_positive, help="the first size")
    )
    limit: int = field(
        default=65536,
        metadata=option("--limit", parse=parse_positive, help="the largest size tried"),
    )
    safety_margin: float = field(
        default=0.10,
        metadata=option(
            "--safety-margin",
            parse=parse_number,
            help="the recommended batch stays this fraction below the edge",
        ),
    )
    search: str = field(
        default=SEARCHES[0],
        metadata=option(
            "--search",
            choices=SEARCHES,
            help="guided: fit the memory model on a few sizes, probe its prediction, step to "
            "the edge (about 5 probes when memory is linear); bisect: double, then bisect",
        ),
    )
    isolate: bool = field(
        default=False,
        metadata=option("--isolate", action="store_true", help="each probe in a fresh process"),
    )

    def __post_init__(self) -> None:
        if self.start < 1 or self.limit < self.start:
            raise B3Error(
                f"need 1 <= start <= limit, got start {self.start} and limit {self.limit}"
            )
        if not 0 <= self.safety_margin < 1:
            raise B3Error(f"safety margin must be in [0, 1), got {self.safety_margin}")
        require_choice("search", self.search, SEARCHES)
