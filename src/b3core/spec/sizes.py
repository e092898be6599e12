"""Batch-size lists as users write them, and the alignments b3 looks for."""

from __future__ import annotations

import re

from b3core.errors import B3Error

_RANGE = re.compile(r"^(\d+)-(\d+)(?::(\d+))?$")


def parse_batch_sizes(text: str, what: str = "batch size") -> list[int]:
    """'100,127,128' or '1-512' or '8-64:8' (start-stop:step, inclusive), mixed freely.

    Returns the sizes sorted and without duplicates. `what` names them in errors.
    """
    sizes: set[int] = set()
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise B3Error(f"empty {what} list")
    for part in parts:
        if not part:
            continue
        match = _RANGE.match(part)
        if match:
            start, stop = int(match.group(1)), int(match.group(2))
            step = int(match.group(3) or 1)
            if start > stop:
                raise B3Error(f"inverted {what} range {part!r}: {start} > {stop}")
            if step < 1:
                raise B3Error(f"{what} range step must be positive in {part!r}")
            sizes.update(range(start, stop + 1, step))
        else:
            try:
                sizes.add(int(part))
            except ValueError:
                raise B3Error(
                    f"cannot read {what} {part!r}; use e.g. 32, 1-512 or 8-64:8"
                ) from None
    if min(sizes) < 1:
        raise B3Error(f"{what}s must be positive, got {min(sizes)}")
    return sorted(sizes)


def parse_seq_lens(text: str) -> list[int]:
    """Sequence lengths, written as batch sizes are: '128,256,512' or '64-512:64'."""
    return parse_batch_sizes(text, what="sequence length")


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def around_powers_of_two(low: int, high: int) -> list[int]:
    """Each power of two in [low, high] with its neighbours: the sizes that show alignment."""
    sizes = set()
    p = 1
    while p <= high:
        if p >= low:
            sizes.update(s for s in (p - 1, p, p + 1) if low <= s <= high)
        p *= 2
    return sorted(sizes)
