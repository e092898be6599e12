"""One protocol for a step in another process.

Three kinds of process run a step for b3: a fresh process that measures one configuration
(`isolation`), a side's worker in `b3 compare` (through the side's `endpoint`), and the ranks
of a data-parallel world (`distributed`). They speak alike: messages are JSON, one per line; an
answer is the value asked for, or a failure `{"error": KIND, "message": ONE LINE}`; a rank
that must leave exits with its kind's exit code. Every failure's kind is decided here, by one
classifier, in the process where it happened (which knows its torch's errors).

Torch-free: a parent that only reads answers never imports torch for it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NoReturn

from b3core.errors import B3Error, MemoryBudgetExceeded, StepOutOfMemory

OUT_OF_MEMORY, BAD_INPUT, IMPORT, ERROR = "out_of_memory", "bad_input", "import", "error"
# A process that ends on a failure exits with its kind's code (75: EX_TEMPFAIL, "try smaller")
EXIT_CODES = {OUT_OF_MEMORY: 75, BAD_INPUT: 2, IMPORT: 2, ERROR: 1}
# torch's out-of-memory errors that are RuntimeErrors, not torch.OutOfMemoryError: the CPU
# allocator, and cuBLAS or cuDNN failing to get their workspace on a full GPU.
OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """The one out-of-memory classifier: torch's, the host's, and b3's own budget guard."""
    if isinstance(exc, (StepOutOfMemory, MemoryBudgetExceeded, MemoryError)):
        return True
    torch = sys.modules.get("torch")  # no torch imported: no torch error to recognise
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(text in message for text in OOM_MESSAGES)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass(frozen=True)
class Failure:
    """Why a step in another process did not run: its kind and one line."""

    kind: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        if isinstance(exc, StepOutOfMemory):
            return cls(OUT_OF_MEMORY, exc.reason)
        if is_out_of_memory(exc):
            return cls(OUT_OF_MEMORY, f"{type(exc).__name__}: {first_line(exc)}")
        if isinstance(exc, ImportError):
            return cls(IMPORT, f"{type(exc).__name__}: {first_line(exc)}")
        if isinstance(exc, B3Error):
            return cls(BAD_INPUT, first_line(exc))
        return cls(ERROR, f"{type(exc).__name__}: {first_line(exc)}")

    @classmethod
    def from_answer(cls, answer: dict) -> Failure | None:
        """The failure an answer carries, or None for a value."""
        if "error" not in answer:
            return None
        return cls(str(answer["error"]), str(answer.get("message", "")))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.kind, 1)

    def to_dict(self) -> dict:
        return {"error": self.kind, "message": self.message}

    def raise_for(self, label: str) -> NoReturn:
        """As the caller's error: out of memory is StepOutOfMemory (the run goes on), the rest
        one-line B3Errors."""
        if self.kind == OUT_OF_MEMORY:
            raise StepOutOfMemory(label, self.message)
        raise B3Error(self.message if self.kind == BAD_INPUT else f"{label}: {self.message}")
