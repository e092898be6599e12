"""`b3 sweep`: the training step over many batch sizes, saved as it goes, resumable."""

from __future__ import annotations

import argparse
import sys

from .options import (
    add_model_options,
    add_timing_options,
    batch_size_list,
    memory_size,
    positive_int,
    spec_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="time the training step over many batch sizes")
    p.add_argument(
        "--batch-sizes",
        "--batch_sizes",
        type=batch_size_list,
        required=True,
        help="e.g. 100,127,128,129 or 1-512 or 8-256:8",
    )
    add_model_options(p)
    add_timing_options(p, repeats_help="timed steps per batch size, over all passes")
    p.add_argument(
        "--passes",
        type=positive_int,
        default=None,
        help="passes over all sizes, each in a fresh shuffled order; the replicates of the "
        "alignment test (default 5, or --repeats if fewer)",
    )
    p.add_argument("--inference", action="store_true", help="time the inference step as well")
    p.add_argument("--isolate", action="store_true", help="each size in a fresh process")
    p.add_argument("--memory-budget", type=memory_size, default=None, help="e.g. 8G")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="b3-sweep", help="folder for sweep.{jsonl,csv,json,png}")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from b3core.measuring.machine import machine_record
    from b3core.measuring.runner import prepare_device
    from b3core.reports.sweep_report import render_sweep_summary, write_sweep_report
    from b3core.studies.sweep import SweepLog, SweepPlan, aggregate, run_sweep

    plan = SweepPlan(
        base=spec_from_args(args, args.batch_sizes[0]),
        batch_sizes=tuple(args.batch_sizes),
        repeats=args.repeats,
        passes=args.passes or min(5, args.repeats),
        warmup=args.warmup,
        inference=args.inference,
        isolate=args.isolate,
        memory_budget=args.memory_budget,
        seed=args.seed,
    )
    prepare_device(plan.base)  # a device or precision that cannot run fails before any file
    machine = machine_record()
    log = SweepLog.open(args.out, plan, resume=args.resume, machine=machine)
    total = len(plan.units())
    bar = tqdm(
        total=total,
        initial=min(len(log.records), total),
        desc="b3 sweep",
        unit="unit",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None,
    )

    def on_unit(unit, record) -> None:
        bar.set_postfix_str(f"{unit.mode} bs={unit.batch_size} pass {unit.pass_index + 1}")
        bar.update(1)
        if record is not None:
            write_sweep_report(args.out, aggregate(log.records.values()), machine, final=False)

    try:
        sweep = run_sweep(plan, log, on_unit=on_unit)
    except KeyboardInterrupt:
        print(
            f"b3 sweep: interrupted; {len(log.records)} of {total} units are saved in "
            f"{log.path}; continue with --resume",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
    written = write_sweep_report(args.out, sweep, machine, final=True)
    print(render_sweep_summary(sweep))
    print(f"\nwrote {', '.join(str(p) for p in written)} (raw units: {log.path})")
    return 0
