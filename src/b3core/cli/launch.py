"""`--nproc-per-node` and friends: b3 launches its ranks through torchrun's own engine
(torch.distributed.launcher, what the `torchrun` command runs), so every torchrun convention
holds; `torchrun --nproc-per-node 2 -m b3core.cli step ...` works the same. Each rank runs the
very command line it was given; only rank 0 prints and writes files.

A rank that fails ends the run with one line that names it (its own last line of stderr); the
engine stops the other ranks, and collectives time out rather than hang.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

from b3core.cli.options import non_negative_int, positive_int
from b3core.errors import B3Error

ENGINE_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")


def add_launch_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("data parallel (DDP through torchrun; gloo on CPU, nccl on CUDA)")
    group.add_argument(
        "--nproc-per-node",
        type=positive_int,
        help="ranks on this machine; --batch-size stays the per-rank micro-batch",
    )
    group.add_argument("--nnodes", type=positive_int, default=1, help="machines (default 1)")
    group.add_argument("--node-rank", type=non_negative_int, default=0, help="this machine's")
    group.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="where the ranks meet (default on one machine: a free local port)",
    )


def wanted(args: argparse.Namespace) -> bool:
    """Launch ranks: asked for, and not already one of torchrun's ranks."""
    return args.nproc_per_node is not None and "LOCAL_RANK" not in os.environ


def run_ranks(args: argparse.Namespace, argv: list[str]) -> int:
    """Run `b3 ARGV` as nproc_per_node ranks on this node; 0 when every rank succeeded."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise B3Error("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (node 0's address)")
    if args.node_rank >= args.nnodes:
        raise B3Error(f"--node-rank {args.node_rank} is not below --nnodes {args.nnodes}")
    if args.nproc_per_node > 1:  # torchrun's convention: one intra-op thread per rank
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in ENGINE_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="b3-ranks-") as logs:
        config = LaunchConfig(
            min_nodes=args.nnodes,
            max_nodes=args.nnodes,
            nproc_per_node=args.nproc_per_node,
            run_id=f"b3-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d" if args.nnodes == 1 else "static",
            rdzv_endpoint=args.rdzv_endpoint or "localhost:0",
            # one machine hosts its own rendezvous: a taken port fails at once, not after a wait
            rdzv_configs={"rank": args.node_rank} if args.nnodes > 1 else {"is_host": True},
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=logs, redirects=Std.ERR),
        )
        try:
            elastic_launch(config, sys.executable)("-m", "b3core.cli", *argv)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            said = _last_line(Path(logs), failure.local_rank)
            code = failure.exitcode if failure.exitcode in (1, 2) else 1
            error = B3Error(f"rank {rank} failed (exit {failure.exitcode}): {said}")
            error.exit_code = code
            raise error from None
        except Exception as exc:  # noqa: BLE001 - the rendezvous: a taken port, a bad endpoint
            where = args.rdzv_endpoint or "a local port"
            cause = exc.__cause__ or exc  # the rendezvous error wraps the socket's own
            detail = str(cause).strip().splitlines()
            raise B3Error(
                f"the ranks could not meet at {where}: {type(cause).__name__}: "
                f"{detail[0][:200] if detail else ''}"
            ) from exc
    return 0


def _last_line(logs: Path, local_rank: int) -> str:
    """What the failed rank said last on stderr (b3's one-line error, or a crash's last line)."""
    for path in logs.rglob(f"{local_rank}/stderr.log"):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:300]
    return "it said nothing (killed?)"
