"""Data-parallel measurement on PyTorch's own engine: torch.distributed, launched by torchrun.

A rank learns its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), joins the
process group (nccl on CUDA, gloo elsewhere, with a timeout on every collective, so a dead rank
ends the run instead of hanging it), and is pinned to its own GPU through LOCAL_RANK. A timed
sample is the slowest rank's: barrier, time, then all-gather every rank's time.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT_S = 300  # the longest any rank waits for the others at a collective


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int
    backend: str


def launched() -> bool:
    """Whether this process is one of torchrun's workers."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def current() -> Rank | None:
    if not dist.is_available() or not dist.is_initialized():
        return None
    return Rank(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", 0)),
        dist.get_backend(),
    )


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Rank | None]:
    """Join torchrun's process group for the block (None when not launched by torchrun)."""
    if not launched():
        yield None
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def gather(value: object) -> list:
    """Every rank's value, in rank order, on every rank."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
