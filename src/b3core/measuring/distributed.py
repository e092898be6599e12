"""Data-parallel measurement on PyTorch's own engine: torch.distributed, launched by torchrun.

A rank learns its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), joins the
process group (nccl on CUDA, gloo elsewhere, with a timeout on every collective, so a dead rank
ends the run instead of hanging it), and is pinned to its own GPU through LOCAL_RANK. A timed
sample is the slowest rank's: barrier, time, then all-gather every rank's time.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from b3core.errors import B3Error
from b3core.measuring.protocol import Failure

COLLECTIVE_TIMEOUT_S = 300  # the longest any rank waits for the others at a collective
LEFT_NOTES_ENV = "B3_RANK_NOTES"  # the folder where a rank that leaves says why (set by launch)
ENGINE_LOGGERS = (
    "torch.distributed.elastic",
    "torch.distributed.launcher",
    "torch.multiprocessing",
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
    # torch.distributed.nn's functions default to group=group.WORLD, evaluated at import. Imported
    # once the group exists (DDP imports it lazily), those defaults keep the group alive after
    # its destruction; its gloo threads then free tensors into the finalizing interpreter, which
    # aborts the rank (-6, "terminate called without an active exception"; 1 run in ~40 under
    # load). Imported first, they hold None.
    importlib.import_module("torch.distributed.nn")

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        yield current()
    except BaseException:
        dist.destroy_process_group()
        raise
    # every rank done before any tears its connections down: gloo aborts a rank whose peer
    # closes a connection under it (seen once in 2-rank CI runs)
    dist.barrier()
    gc.collect()  # a model's reference cycles hold the group too
    dist.destroy_process_group()  # the last reference: its threads are joined here


def gather(value: object) -> list:
    """Every rank's value, in rank order, on every rank."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def leave(failure: Failure) -> NoReturn:
    """End this rank now (its peers may be inside a collective that it will never join), with
    its failure's exit code, saying why on stderr (the protocol's one JSON line) and in a note
    for launch(). A peer that this breaks may fail first, and the engine of function ranks
    records only the first failure it sees; the note names this rank."""
    print(json.dumps(failure.to_dict()), file=sys.stderr, flush=True)
    if folder := os.environ.get(LEFT_NOTES_ENV):
        note = Path(folder, f"{os.environ.get('RANK', 0)}.json")
        draft = note.with_suffix(".draft")
        draft.write_text(json.dumps({**failure.to_dict(), "at": time.time()}))
        draft.replace(note)  # whole or absent, whenever launch() reads it
    os._exit(failure.exit_code)


class RankFailed(B3Error):
    """A rank ended the run: its global rank, exit code, and its failure (the protocol's line
    on its stderr; for a rank that crashed, its last line)."""

    def __init__(self, rank: int, exitcode: int, failure: Failure):
        super().__init__(f"rank {rank} failed (exit {exitcode}): {failure.message}")
        self.rank, self.exitcode, self.failure = rank, exitcode, failure
        self.exit_code = exitcode if exitcode in (1, 2) else 1

    @classmethod
    def from_stderr(cls, rank: int, exitcode: int, last_line: str) -> RankFailed:
        try:
            failure = Failure.from_answer(json.loads(last_line))
        except (json.JSONDecodeError, TypeError, AttributeError):
            failure = None
        return cls(rank, exitcode, failure or Failure("error", last_line))


def launch(
    entrypoint: str | Callable,
    args: tuple,
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> dict[int, object]:
    """Run `entrypoint(*args)` (a function, or a program with its arguments) as ranks through
    torchrun's engine (torch.distributed.launcher, what the `torchrun` command runs); returns
    each local rank's return value. A failed rank raises RankFailed; the engine has stopped the
    others by then. A rendezvous that fails (a taken port) is a one-line B3Error."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nnodes > 1 and not rdzv_endpoint:
        raise B3Error("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (node 0's address)")
    if node_rank >= nnodes:
        raise B3Error(f"--node-rank {node_rank} is not below --nnodes {nnodes}")
    if nproc_per_node > 1:  # torchrun's convention: one intra-op thread per rank
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in ENGINE_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="b3-ranks-") as logs, _left_notes(logs) as notes:
        config = LaunchConfig(
            min_nodes=nnodes,
            max_nodes=nnodes,
            nproc_per_node=nproc_per_node,
            run_id=f"b3-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d" if nnodes == 1 else "static",
            rdzv_endpoint=rdzv_endpoint or "localhost:0",
            # one machine hosts its own rendezvous: a taken port fails at once, not after a wait
            rdzv_configs={"rank": node_rank} if nnodes > 1 else {"is_host": True},
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=logs, redirects=Std.ERR),
        )
        try:
            return elastic_launch(config, entrypoint)(*args)
        except ChildFailedError as exc:
            raise _failure(exc.failures, Path(logs), notes) from None
        except Exception as exc:  # noqa: BLE001 - the rendezvous: a taken port, a bad endpoint
            where = rdzv_endpoint or "a local port"
            cause = exc.__cause__ or exc  # the rendezvous error wraps the socket's own
            detail = str(cause).strip().splitlines()
            raise B3Error(
                f"the ranks could not meet at {where}: {type(cause).__name__}: "
                f"{detail[0][:200] if detail else ''}"
            ) from exc


@contextlib.contextmanager
def _left_notes(logs: str) -> Iterator[Path]:
    """A folder for leave()'s notes, named to the ranks through the environment they inherit."""
    folder = Path(logs, "left")
    folder.mkdir()
    before = os.environ.get(LEFT_NOTES_ENV)
    os.environ[LEFT_NOTES_ENV] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            del os.environ[LEFT_NOTES_ENV]
        else:
            os.environ[LEFT_NOTES_ENV] = before


def _failure(failures: dict, logs: Path, notes: Path) -> RankFailed:
    """The rank that ended the run: the first to leave() with a note, else the engine's cause."""
    left = {int(note.stem): json.loads(note.read_text()) for note in notes.glob("*.json")}
    if left:
        rank, note = min(left.items(), key=lambda item: item[1]["at"])
        failure = Failure.from_answer(note)
        return RankFailed(rank, failure.exit_code, failure)
    rank, failure = _cause(failures)
    return RankFailed.from_stderr(rank, failure.exitcode, _last_line(logs, failure.local_rank))


def _cause(failures: dict) -> tuple:
    """The rank that ended the run: one that exited by itself (a positive exit code) before one
    that was aborted or killed (a peer whose collective broke when that rank left), earliest
    first."""
    return min(failures.items(), key=lambda item: (item[1].exitcode <= 0, item[1].timestamp))


def _last_line(logs: Path, local_rank: int) -> str:
    """What the failed rank said last on stderr (b3's one-line error, or a crash's last line)."""
    for path in logs.rglob(f"{local_rank}/stderr.log"):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:300]
    return "it said nothing (killed?)"
