"""`--nproc-per-node` and friends: b3 launches its ranks through torchrun's own engine
(torch.distributed.launcher, what the `torchrun` command runs), so every torchrun convention
holds; `torchrun --nproc-per-node 2 -m b3core.cli step ...` works the same. Each rank runs the
very command line it was given; only rank 0 prints and writes files.

A rank that fails ends the run with one line that names it (its own last line of stderr); the
engine stops the other ranks, and collectives time out rather than hang.
"""

from __future__ import annotations

import argparse
import sys

from b3core.cli.options import non_negative_int, positive_int


def add_launch_options(p: argparse.ArgumentParser, *, nodes: bool = True) -> None:
    """--nproc-per-node, and with `nodes` the options of a world across machines."""
    group = p.add_argument_group("data parallel (DDP through torchrun; gloo on CPU, nccl on CUDA)")
    group.add_argument(
        "--nproc-per-node",
        type=positive_int,
        help="ranks on this machine; --batch-size stays the per-rank micro-batch",
    )
    if not nodes:
        return
    group.add_argument("--nnodes", type=positive_int, default=1, help="machines (default 1)")
    group.add_argument("--node-rank", type=non_negative_int, default=0, help="this machine's")
    group.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="where the ranks meet (default on one machine: a free local port)",
    )


def wanted(args: argparse.Namespace) -> bool:
    """Launch ranks: asked for, and not already one of torchrun's ranks."""
    from b3core.measuring.distributed import launched

    return args.nproc_per_node is not None and not launched()


def run_ranks(args: argparse.Namespace, argv: list[str]) -> int:
    """Run `b3 ARGV` as nproc_per_node ranks on this node; 0 when every rank succeeded."""
    from b3core.measuring.distributed import launch

    launch(
        sys.executable,
        ("-m", "b3core.cli", *argv),
        nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        rdzv_endpoint=args.rdzv_endpoint,
    )
    return 0
