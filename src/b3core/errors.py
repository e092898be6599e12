"""Errors that b3 reports to the user as one line, never as a traceback."""

from __future__ import annotations


class B3Error(Exception):
    """Bad input or an unusable environment: the CLI prints it on one line and exits 2."""


class MemoryBudgetExceeded(MemoryError):
    """Raised by b3's own memory guard when a step used more than the allowed budget."""


class StepOutOfMemory(Exception):
    """A configuration did not fit: raised after its memory was released, with no frames kept."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"{label}: out of memory ({reason})")
        self.label, self.reason = label, reason
