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
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT_S = 300  # the longest any rank waits for the others at a collective
COMM_SHARE_METHOD = (
    "no_sync: blocks of the same step with DDP's gradient all-reduce skipped (model.no_sync() "
    "around every micro-batch), alternating with normal blocks; share = 1 - no_sync / normal"
)


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


@dataclass(frozen=True)
class DistributedInfo:
    """What a data-parallel measurement adds: the world, the global batch, every rank's own
    block times (the measurement keeps the slowest rank's), and the share of a step spent in
    gradient communication."""

    world_size: int
    backend: str
    per_rank_batch: int
    accumulation_steps: int
    rank_times: tuple[tuple[float, ...], ...]  # [rank][sample], seconds per timed block
    comm_share: float | None
    comm_share_method: str = COMM_SHARE_METHOD

    @property
    def global_batch_size(self) -> int:
        return self.per_rank_batch * self.world_size * self.accumulation_steps

    @property
    def straggler_spread(self) -> float:
        """The slowest rank's median block over the median rank's: 1.0 is no straggler."""
        medians = [statistics.median(times) for times in self.rank_times]
        return max(medians) / statistics.median(medians)

    def to_dict(self) -> dict:
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "per_rank_batch": self.per_rank_batch,
            "accumulation_steps": self.accumulation_steps,
            "global_batch_size": self.global_batch_size,
            "rank_times": [list(times) for times in self.rank_times],
            "straggler_spread": self.straggler_spread,
            "comm_share": self.comm_share,
            "comm_share_method": self.comm_share_method,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DistributedInfo:
        return cls(
            int(d["world_size"]),
            d["backend"],
            int(d["per_rank_batch"]),
            int(d["accumulation_steps"]),
            tuple(tuple(times) for times in d["rank_times"]),
            d.get("comm_share"),
            d.get("comm_share_method", COMM_SHARE_METHOD),
        )
