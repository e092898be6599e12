"""The benchmark cases: one definition that the pytest suite, the asv suite and the CLI share.

A profile names models, batch sizes, precisions and accumulation settings; `benchmark_cases`
expands it, narrowed or widened by the user's overrides, into StepSpecs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from b3core.spec.case_options import CaseOptions
from b3core.spec.sizes import around_powers_of_two, parse_batch_sizes, parse_seq_lens
from b3core.spec.step import MODES, PRECISIONS, PROFILES, StepSpec, Timing
from b3core.spec.validate import parse_positive_int, require_choice
from b3core.workloads.devices import (
    mixed_precision_for,
    resolve_device,
    supported_precisions,
)
from b3core.workloads.models import get_model_spec, list_models

SEQ_LEN_MARK = "/seq"  # a sequence length on asv's model axis


@dataclass(frozen=True)
class Profile:
    name: str
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    precisions: tuple[str, ...]
    accumulation_steps: tuple[int, ...] = (1,)
    image_sizes: dict[str, int] = field(default_factory=dict)
    seq_lens: tuple[int, ...] = ()  # the sequence models' lengths (none: each model's own)


def _fast_precisions(device_type: str) -> tuple[str, ...]:
    # bf16 on a CPU without native bf16 is emulated and ~40x slower: not for a quick run
    return ("fp32",) if device_type == "cpu" else ("fp32", "fp16")


def get_profile(name: str, device: str = "auto") -> Profile:
    """The named profile, fitted to the device (the quick profile is small on CPU)."""
    require_choice("profile", name, PROFILES)
    dev = resolve_device(device)
    if name == "quick":
        return Profile(
            name="quick",
            models=("simple_cnn", "mobilenet_v3_small"),
            batch_sizes=(15, 16, 17, 31, 32, 33),
            precisions=_fast_precisions(dev.type),
            accumulation_steps=(1, 2),
            image_sizes={"mobilenet_v3_small": 64},
        )
    if name == "b3":
        return Profile(
            name="b3",
            models=("mobilenet_v3_large",),
            batch_sizes=(100, 127, 128, 129, 156, 511, 512, 513),
            precisions=(mixed_precision_for(dev),),
        )
    dense = sorted(set(range(8, 513, 8)) | set(around_powers_of_two(1, 513)))
    return Profile(
        name="full",
        models=tuple(list_models()),
        batch_sizes=tuple(dense),
        precisions=PRECISIONS,
        accumulation_steps=(1, 2, 4),
        seq_lens=(128, 256, 512),
    )


def _split(text: str | None) -> list[str] | None:
    if text is None or not str(text).strip():
        return None
    return [part.strip() for part in str(text).split(",") if part.strip()]


def benchmark_cases(
    options: CaseOptions, mode: str | None = None, *, resolve_models: bool = True
) -> list[StepSpec]:
    """Every StepSpec of the profile after overrides, in a stable order (for stable test ids).
    `resolve_models=False` leaves the model names unchecked here: `b3 compare`'s workers import
    them, each from its own revision."""
    grid = case_grid(options, resolve_models=resolve_models)
    modes = [mode] if mode else list(MODES)
    cases = []
    for model in grid.models:
        for precision, acc, seq_len, size, case_mode in itertools.product(
            grid.precisions,
            grid.accumulation_steps,
            grid.lengths_of(model),
            grid.batch_sizes,
            modes,
        ):
            if case_mode == "inference" and acc != grid.accumulation_steps[0]:
                continue  # accumulation does not apply to inference: one case is enough
            cases.append(grid.case(model, size, precision, case_mode, acc, seq_len))
    return cases


@dataclass(frozen=True)
class CaseGrid:
    """A profile after the user's overrides: the axes that both suites parametrize over."""

    profile: Profile
    device: str
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    precisions: tuple[str, ...]
    accumulation_steps: tuple[int, ...]
    seq_lens: tuple[int, ...] = ()
    # the models that take the grid's lengths: its sequence models (every model when models are
    # left unresolved, for compare's workers: the user named the lengths)
    sequence_models: frozenset[str] = frozenset()
    activation_checkpointing: str = StepSpec.activation_checkpointing  # every training case's

    def lengths_of(self, model: str) -> tuple[int | None, ...]:
        """The lengths a model is timed at: the grid's for a sequence model, else its own."""
        return self.seq_lens if self.seq_lens and model in self.sequence_models else (None,)

    def model_axis(self) -> list[str]:
        """asv's model parameter: each model, and a sequence model once per length of the grid
        ("gpt_small/seq128", the length as the step's label writes it), so that asv's three
        parameters stay as they were for every other model."""
        return [
            model if seq_len is None else f"{model}{SEQ_LEN_MARK}{seq_len}"
            for model in self.models
            for seq_len in self.lengths_of(model)
        ]

    def case_on_axis(self, axis_value: str, batch_size: int, precision: str, mode: str) -> StepSpec:
        model, mark, length = axis_value.rpartition(SEQ_LEN_MARK)
        if mark and length.isdigit():
            return self.case(model, batch_size, precision, mode, seq_len=int(length))
        return self.case(axis_value, batch_size, precision, mode)

    def case(
        self,
        model: str,
        batch_size: int,
        precision: str,
        mode: str = "train",
        accumulation_steps: int = 1,
        seq_len: int | None = None,
    ) -> StepSpec:
        return StepSpec(
            model=model,
            batch_size=batch_size,
            precision=precision,
            accumulation_steps=accumulation_steps,
            image_size=self.profile.image_sizes.get(model),
            seq_len=seq_len,
            device=self.device,
            activation_checkpointing=self.activation_checkpointing,
        ).for_mode(mode)


def case_grid(options: CaseOptions, *, resolve_models: bool = True) -> CaseGrid:
    profile = get_profile(options.profile, options.device)
    models = _split(options.models) or list(profile.models)
    if resolve_models:  # unknown names fail here, with suggestions
        sequence_models = {m for m in models if get_model_spec(m).takes_tokens}
    else:
        sequence_models = set(models)
    sizes = parse_batch_sizes(options.batch_sizes) if options.batch_sizes else profile.batch_sizes
    precisions = _split(options.precisions) or list(profile.precisions)
    for precision in precisions:
        require_choice("precision", precision, PRECISIONS)
    accumulation = [
        parse_positive_int("accumulation steps", a)
        for a in _split(options.accumulation_steps) or profile.accumulation_steps
    ]
    seq_lens = parse_seq_lens(options.seq_lens) if options.seq_lens else profile.seq_lens
    return CaseGrid(
        profile,
        str(resolve_device(options.device)),
        tuple(models),
        tuple(sizes),
        tuple(precisions),
        tuple(accumulation),
        tuple(seq_lens),
        frozenset(sequence_models),
        options.activation_checkpointing or StepSpec.activation_checkpointing,
    )


def unsupported_reason(spec: StepSpec) -> str | None:
    """Why the case cannot run here (a precision the device lacks), or None."""
    supported = supported_precisions(resolve_device(spec.device))
    if spec.precision not in supported:
        return (
            f"{spec.precision} is not supported on {spec.device} (it runs {', '.join(supported)})"
        )
    return None


def profile_settings(options: CaseOptions) -> Timing:
    """How each case is timed, after overrides: rounds are the timed samples."""
    overrides = {"repeats": options.rounds, "warmup": options.warmup, "clock": options.clock}
    return Timing(**{k: v for k, v in overrides.items() if v is not None})
