"""Errors that b3 reports to the user as one line, never as a traceback."""

from __future__ import annotations


class B3Error(Exception):
    """Bad input or an unusable environment: the CLI prints it on one line and exits 2."""

    exit_code = 2


class MemoryBudgetExceeded(MemoryError):
    """Raised by b3's own memory guard when a step used more than the allowed budget."""


class StepOutOfMemory(B3Error):
    """A configuration did not fit: raised after its memory was released, with no frames kept.
    The CLI prints it on one line and exits 1; results measured before it are kept."""

    exit_code = 1

    def __init__(self, label: str, reason: str):
        super().__init__(f"{label}: out of memory ({reason})")
        self.label, self.reason = label, reason
