"""The user's overrides of a benchmark profile: the one declaration from which pytest's
--b3-* options, asv's parameters and the B3_* variables come. Torch-free, so that pytest can
declare its options without importing torch."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from b3core.spec.step import (
    CHECKPOINTING,
    CLOCKS,
    DEVICE_CHOICES,
    PRECISIONS,
    PROFILES,
    StepSpec,
    Timing,
)
from b3core.spec.validate import parse_positive_int

ENV_PREFIX = "B3_"
# The axes a profile spans: CaseOptions' field (a comma-separated list) -> StepSpec's field
AXES = {
    "models": "model",
    "batch_sizes": "batch_size",
    "precisions": "precision",
    "accumulation_steps": "accumulation_steps",
    "seq_lens": "seq_len",
}
_INTEGERS = ("rounds", "warmup")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class CaseOptions:
    """The user's overrides of a profile, from command-line options or B3_* variables."""

    profile: str = field(default=PROFILES[0], metadata=_help("|".join(PROFILES)))
    device: str = field(default=DEVICE_CHOICES[0], metadata=_help("|".join(DEVICE_CHOICES)))
    models: str | None = field(
        default=None,
        metadata=_help("comma-separated models: names, package.module:function, timm/NAME"),
    )
    batch_sizes: str | None = field(default=None, metadata=_help("e.g. 15,16,17 or 1-64 or 8-64:8"))
    precisions: str | None = field(
        default=None, metadata=_help("comma-separated: " + ",".join(PRECISIONS))
    )
    accumulation_steps: str | None = field(
        default=None, metadata=_help("comma-separated, e.g. 1,2,4")
    )
    seq_lens: str | None = field(
        default=None,
        metadata=_help("the sequence models' lengths, e.g. 128,512 (default: each model's own)"),
    )
    activation_checkpointing: str | None = field(
        default=None,
        metadata=_help(
            f"{'|'.join(CHECKPOINTING)}, for every training case "
            f"(StepSpec's: {StepSpec.activation_checkpointing})"
        ),
    )
    rounds: int | None = field(
        default=None, metadata=_help(f"timed rounds per case (Timing's: {Timing.repeats})")
    )
    warmup: int | None = field(
        default=None, metadata=_help(f"untimed warm-up steps, at least {Timing.warmup}")
    )
    clock: str | None = field(
        default=None, metadata=_help(f"{'|'.join(CLOCKS)} (Timing's: {Timing.clock})")
    )

    @classmethod
    def from_env(cls, **given) -> CaseOptions:
        """Explicit values win; unset ones fall back to B3_PROFILE, B3_DEVICE, B3_MODELS, ..."""
        values = {}
        for name in cls.__dataclass_fields__:
            value = given.get(name)
            if value is None:
                value = os.environ.get(env_name(name))
            if value is not None:
                values[name] = parse_positive_int(name, value) if name in _INTEGERS else value
        return cls(**values)


def narrowed_to(spec_values: dict) -> dict:
    """CaseOptions' axes narrowed to the StepSpec values given (None: the profile's own)."""
    return {
        axis: str(spec_values[name])
        for axis, name in AXES.items()
        if spec_values.get(name) is not None
    }


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def option_help(f: dataclasses.Field) -> str:
    """A field's help, with its default and its variable: what pytest's --help shows."""
    default = "" if f.default is None else f"; default: {f.default}"
    return f"{f.metadata['help']} (env {env_name(f.name)}{default})"
