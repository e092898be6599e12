"""What a precision setting means for a step: autocast, GradScaler and TF32 flags."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager

import torch

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def configure_math_mode(precision: str, device: torch.device) -> None:
    """fp32 must mean real fp32, so TF32 is switched on only when asked for."""
    if device.type == "cuda":
        allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32


def autocast_factory(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """A callable that opens the autocast region for one forward pass (or a no-op)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
