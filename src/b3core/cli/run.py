"""`b3 run`: B3's experiment (train N epochs through a DataLoader, then time inference)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from b3core.cli import launch
from b3core.cli.options import (
    add_fields_as_options,
    boolean,
    positive_int,
    record_args,
    renamed,
    spec_from_args,
    write_json,
)
from b3core.errors import B3Error
from b3core.spec.run import RunConfig
from b3core.spec.step import StepSpec

# B3's Lightning strategies: one process, or data parallel (what --num-devices N then runs)
STRATEGIES = ("auto", "none", "ddp")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="B3's experiment: train N epochs, then time inference")
    # B3's defaults (MobileNetV3-large, batch 128); precision None means "not given", so that
    # --mixed-precision can say when the two disagree.
    add_fields_as_options(
        p,
        StepSpec,
        skip=("mode",),
        defaults={"model": "mobilenet_v3_large", "batch_size": 128, "precision": None},
        aliases={"device": ("--accelerator",)},
    )
    add_fields_as_options(p, RunConfig, skip=("step",))
    p.add_argument(
        "--mixed-precision",
        "--mixed_precision",
        type=boolean,
        default=False,
        help="true: fp16 AMP on CUDA, the best mixed precision elsewhere",
    )
    p.add_argument("--runs", type=positive_int, default=1, help="independent runs")
    renamed(p, "--repeats", "--runs")  # --repeats means timed samples in b3 step
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--output-path", "--output_path", default=None, help="folder for b3-run.json")
    p.add_argument(
        "--num-devices",
        "--num_devices",
        type=positive_int,
        default=1,
        help="B3's spelling of --nproc-per-node (with --strategy ddp)",
    )
    p.add_argument(
        "--strategy",
        default=None,
        choices=STRATEGIES,
        help="B3's: ddp (data parallel, with --num-devices), none (one process), auto",
    )
    launch.add_launch_options(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from b3core.measuring.distributed import process_group
    from b3core.workloads.build import resolve
    from b3core.workloads.devices import mixed_precision_for, resolve_device

    if args.strategy == "none" and (args.num_devices > 1 or args.nproc_per_node):
        raise B3Error("--strategy none runs one process: drop --num-devices/--nproc-per-node")
    if args.num_devices > 1 and args.nproc_per_node is None:
        args.nproc_per_node = args.num_devices  # B3's Lightning flags: one rank per device
    device = resolve_device(args.device)
    precision = args.precision
    if args.mixed_precision:
        mixed = mixed_precision_for(device)
        if precision not in (None, mixed):
            raise B3Error(
                f"--mixed-precision true means {mixed} here, but --precision is {precision}"
            )
        precision = mixed
    cfg = RunConfig(
        step=spec_from_args(args, precision=precision or "fp32", mode="train"),
        **record_args(RunConfig, args, skip=("step",)),
    )
    device = resolve(cfg.step).device  # bad input fails here, once, not in every rank
    if launch.wanted(args):
        return launch.run_ranks(args, args.argv)
    with process_group(device) as rank:
        return _run(args, cfg, rank)


def _run(args: argparse.Namespace, cfg, rank) -> int:
    """The runs; under data parallel every rank trains on its shard, rank 0 alone reports."""
    from b3core.measuring.machine import machine_record
    from b3core.reports.tables import experiment_rows, to_text
    from b3core.studies.experiment import run_experiment

    if rank is not None and rank.rank != 0:
        run_experiment(cfg, repeats=args.runs)
        return 0
    step = cfg.step
    how = (
        f"mixed precision: {step.precision}"
        if args.mixed_precision
        else f"precision: {step.precision}"
    )
    ranks = f", {rank.world_size} ranks ({rank.backend})" if rank else ""
    print(
        f"b3 run: {step.model}, batch {step.batch_size}{ranks}, {cfg.num_epochs} epoch(s), "
        f"{how}, {cfg.dataset} data, device {step.device}, {args.runs} run(s)",
        flush=True,
    )
    result = run_experiment(
        cfg,
        repeats=args.runs,
        progress=lambda i, n: print(f"  run {i}/{n} done", file=sys.stderr, flush=True),
    )
    if result.runs:
        print(to_text(experiment_rows(result)))
    pipeline = result.input_pipeline()
    if pipeline:
        print(
            f"input pipeline: {pipeline['overhead_s']:.3g} s of the mean train time "
            f"({pipeline['overhead_fraction']:.0%}) is beyond {pipeline['steps']} steps x "
            f"{pipeline['step_mean_s'] * 1e3:.4g} ms, the mean step timed alone (blocked clock)"
        )
    if result.runs:
        print(
            "times are mean ± SD over runs; samples/s is all runs' samples over all runs' time; "
            "both phases were warmed up outside the clock; the train time includes data "
            "loading, as in B3"
        )
    payload = {"result": result.to_dict(), "machine": machine_record()}
    if args.json:
        write_json(args.json, "run", payload)
    if args.output_path:
        write_json(Path(args.output_path) / "b3-run.json", "run", payload)
    if result.failure:
        kept = f"; the {len(result.runs)} finished run(s) are kept above" if result.runs else ""
        what = "b3 run: interrupted" if result.interrupted else f"b3 run: error: {result.failure}"
        print(f"{what}{kept}", file=sys.stderr)
        return 130 if result.interrupted else 1
    return 0
