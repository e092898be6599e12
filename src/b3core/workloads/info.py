"""What a built workload was: torch-free, saved with every result."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkloadInfo:
    """What was built, recorded when it was measured, so that reports need no model."""

    parameters: int
    input_shape: tuple[int, ...]
    num_classes: int
    batch_dependent_layers: bool  # BatchNorm: accumulation is then not a true large batch

    def to_dict(self) -> dict:
        return {**self.__dict__, "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> WorkloadInfo:
        return cls(
            int(d["parameters"]),
            tuple(d["input_shape"]),
            int(d["num_classes"]),
            bool(d["batch_dependent_layers"]),
        )
