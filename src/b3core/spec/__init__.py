"""The spec: what a step is and how it is timed. Torch-free, so that saved results load anywhere."""

from b3core.spec.step import (
    CLOCKS,
    DATASETS,
    DEFAULT_LR,
    DEFAULT_REPEATS,
    DEVICE_CHOICES,
    MIN_WARMUP,
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    StepSpec,
    Timing,
)

__all__ = [
    "CLOCKS",
    "DATASETS",
    "DEFAULT_LR",
    "DEFAULT_REPEATS",
    "DEVICE_CHOICES",
    "MIN_WARMUP",
    "MODES",
    "OPTIMIZERS",
    "PRECISIONS",
    "StepSpec",
    "Timing",
]
