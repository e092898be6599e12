"""What a built workload was: torch-free, saved with every result."""

from __future__ import annotations

from dataclasses import dataclass

# what the targets are: a class per sample, or the next token at every position of a sequence
CLASSIFICATION, CAUSAL_LM = "classification", "causal-lm"


def tokens_per_sample(shape: tuple[int, ...], dtype: str) -> int | None:
    """A sequence of token ids is a sample of this many tokens; other inputs have none."""
    return shape[0] if dtype == "int64" and len(shape) == 1 else None


@dataclass(frozen=True)
class WorkloadInfo:
    """What was built, recorded when it was measured, so that reports need no model."""

    parameters: int
    input_shape: tuple[int, ...]
    num_classes: int
    batch_dependent_layers: bool  # BatchNorm: accumulation is then not a true large batch
    input_dtype: str = "float32"
    task: str = CLASSIFICATION
    # the model's identity: where it came from, and the version of the package that provides it
    origin: str = "built-in"  # built-in, entry point, import path or timm
    package: str | None = None
    version: str | None = None

    def to_dict(self) -> dict:
        return {**self.__dict__, "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> WorkloadInfo:
        return cls(
            int(d["parameters"]),
            tuple(d["input_shape"]),
            int(d["num_classes"]),
            bool(d["batch_dependent_layers"]),
            d.get("input_dtype", "float32"),
            d.get("task", CLASSIFICATION),  # saved before sequence models: all classifiers
            d.get("origin", "built-in"),  # b3 0.2's results knew only built-in models
            d.get("package"),
            d.get("version"),
        )

    @property
    def tokens_per_sample(self) -> int | None:
        return tokens_per_sample(self.input_shape, self.input_dtype)

    @property
    def identity(self) -> str:
        """e.g. "timm 1.0.31", "my-project 0.1 (entry point)", "built-in"."""
        if self.origin == "built-in":
            return self.origin
        provider = " ".join(filter(None, [self.package, self.version]))
        return f"{provider} ({self.origin})" if self.origin != "timm" else provider
