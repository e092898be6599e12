"""A convergence study's runs as records (studies/converge.py trains them): each saves to one
JSON line of the study's log and loads again without torch, for the reports and the advice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class CurvePoint:
    """One validation look during a run, and where training stood at it."""

    update: int
    samples: int
    epochs: float
    seconds: float  # training-step seconds so far
    batch_size: int  # the batch of this stretch of training (it grows with grow_batch)
    lr: float
    train_loss: float  # mean over the updates since the previous look
    val_accuracy: float
    noise_scale: float | None = None  # B_simple so far, measured with 2+ accumulation steps

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> CurvePoint:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class ConvergeRun:
    """One (batch, seed) run. A run whose batch ran out of memory has no curve, and None (the
    default) for what only a run that trained measures; its saved line leaves those out."""

    batch_size: int
    seed: int
    accumulation_steps: int
    out_of_memory: str | None = None  # the error's first line
    peak_lr: float  # NaN for a run out of memory
    warmup_updates: int | None = None
    budget_updates: int | None = None  # with regime adaptation; else the budget is max_epochs
    train_size: int | None = None
    val_size: int | None = None
    steps_to_target: int | None
    epochs_to_target: float | None
    samples_to_target: int | None
    seconds_to_target: float | None
    diverged_at_step: int | None = None
    updates: int
    epochs: float | None = None
    samples: int | None = None
    train_seconds: float | None = None
    final_batch_size: int | None = None
    noise_scale: float | None
    noise_scale_steps: int | None = None
    probe_seconds: float | None = None
    reached: bool
    diverged: bool
    best_val_accuracy: float | None
    final_val_accuracy: float | None
    final_train_accuracy: float | None = None
    generalization_gap: float | None
    curve: tuple[CurvePoint, ...]

    @classmethod
    def finished(
        cls,
        *,
        curve: Sequence[CurvePoint],
        at_target: CurvePoint | None,
        final_train_accuracy: float | None = None,
        **measured: Any,
    ) -> ConvergeRun:
        """The record of a run that ended: steps, epochs, samples and seconds to target from
        its first point at the target, and its outcome, accuracies and gap from its curve."""
        final = curve[-1].val_accuracy if curve else None
        train = final_train_accuracy
        return cls(
            **measured,
            steps_to_target=at_target.update if at_target else None,
            epochs_to_target=at_target.epochs if at_target else None,
            samples_to_target=at_target.samples if at_target else None,
            seconds_to_target=at_target.seconds if at_target else None,
            reached=at_target is not None,
            diverged=measured.get("diverged_at_step") is not None,
            best_val_accuracy=max((p.val_accuracy for p in curve), default=None),
            final_val_accuracy=final,
            final_train_accuracy=train,
            generalization_gap=None if train is None or final is None else train - final,
            curve=tuple(curve),
        )

    @property
    def noise_scale_at_target(self) -> float | None:
        """The run's gradient noise scale when it reached the target: the noise scale grows as
        training goes on (and |G|^2 shrinks), and the batch that the steps to target reward is
        the one of that stretch of training, not of the end."""
        point = next((p for p in self.curve if p.update == self.steps_to_target), None)
        return point.noise_scale if point else None

    def to_dict(self) -> dict:
        """The saved line, with the keys b3 has always written: out_of_memory only on a run
        that ran out of memory, and such a run without what it never measured."""
        d = {**self.__dict__, "curve": [p.to_dict() for p in self.curve]}
        if self.out_of_memory is None:
            del d["out_of_memory"]
            return d
        unmeasured = {f.name for f in fields(self) if f.default is None}
        return {k: v for k, v in d.items() if not (v is None and k in unmeasured)}

    @classmethod
    def from_dict(cls, d: dict) -> ConvergeRun:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "curve": tuple(CurvePoint.from_dict(p) for p in d["curve"])})
