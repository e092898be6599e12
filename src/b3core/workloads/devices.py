"""Choosing a device and the precisions it can run."""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager as ContextManager

import torch

from b3core.errors import B3Error
from b3core.spec.step import DEVICE_CHOICES, PRECISIONS
from b3core.spec.validate import require_choice


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a user's device name into a torch.device that exists on this machine."""
    name = (name or "auto").lower()
    if name == "gpu":  # B3's Lightning spelling
        name = "cuda"
    kind = name.split(":")[0]
    require_choice("device", kind, DEVICE_CHOICES)
    if kind == "auto":
        if torch.cuda.is_available():
            return _indexed_cuda(torch.device("cuda"))
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise B3Error(f"--device {name}: no CUDA device is available on this machine")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise B3Error(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
        return _indexed_cuda(device)
    if kind == "mps" and not _mps_available():
        raise B3Error(f"--device {name}: MPS is not available on this machine")
    return torch.device(name)


def _indexed_cuda(device: torch.device) -> torch.device:
    """'cuda' as 'cuda:N' (the current GPU): some torch.cuda calls refuse a device without an
    index, e.g. set_per_process_memory_fraction in torch 2.11."""
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun, each rank on its own GPU (LOCAL_RANK), not all on GPU 0."""
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    local = int(os.environ["LOCAL_RANK"])
    if local >= torch.cuda.device_count():
        raise B3Error(f"local rank {local} has no GPU: {torch.cuda.device_count()} GPU(s) here")
    return torch.device("cuda", local)


def device_context(device: torch.device) -> ContextManager:
    """Make `device` the current one, so that streams, events and allocations land on it (with
    --device cuda:1, torch's current device would otherwise still be GPU 0)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on the device, so that a host clock reading is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def supported_precisions(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        precisions = ["fp32", "fp16"]
        if major >= 8:
            precisions.append("tf32")
        if torch.cuda.is_bf16_supported():
            precisions.append("bf16")
        return tuple(precisions)
    if device.type == "mps":
        return ("fp32", "fp16", "bf16")
    # CPU autocast runs bf16; fp16 there has no GradScaler-backed training path worth timing.
    return ("fp32", "bf16")


def check_precision(precision: str, device: torch.device) -> str:
    """Return the precision if the device can run it, else raise a one-line error."""
    require_choice("precision", precision, PRECISIONS)
    supported = supported_precisions(device)
    if precision not in supported:
        raise B3Error(
            f"precision {precision} is not supported on {device.type}; "
            f"this device runs {', '.join(supported)}"
        )
    return precision


def mixed_precision_for(device: torch.device) -> str:
    """B3's `--mixed_precision true`: fp16 AMP on CUDA, else the best the device has."""
    supported = supported_precisions(device)
    if device.type in ("cuda", "mps") and "fp16" in supported:
        return "fp16"
    return "bf16" if "bf16" in supported else "fp32"
