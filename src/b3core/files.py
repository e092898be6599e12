"""Writing b3's files whole: a reader (another rank, a later run, a user's script) never sees
half of one, even when the writer is killed mid-write."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path` (one per process, so that concurrent writers do
    not share it), then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
