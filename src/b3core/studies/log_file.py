"""The append-only JSON-lines logs of sweeps and convergence studies: a header line, then one
line per finished unit, each flushed and synced as it is written, so that an interrupted study
loses nothing already measured and `--resume` runs only what is missing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from b3core.errors import B3Error
from b3core.spec import formats


def create(path: Path, kind: str, header: dict) -> None:
    """A new log whose header line says its format (spec/formats.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(json.dumps(formats.stamped(kind, header)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: str | Path, what: str) -> list[str]:
    """The log's complete lines: a last line cut off by a kill mid-write is dropped. A missing
    or binary file is a one-line B3Error naming `what` the log is of."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise B3Error(f"no {what} log at {path}") from None
    except UnicodeDecodeError:
        raise B3Error(f"{what} log {path} is corrupt: not text") from None
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # unterminated: the write was interrupted
    return [line for line in lines if line.strip()]
