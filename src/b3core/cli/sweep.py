"""`b3 sweep`: the training step over many batch sizes, saved as it goes, resumable."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from b3core.cli import launch
from b3core.cli.options import (
    add_fields_as_options,
    batch_size_list,
    memory_size,
    positive_int,
    renamed,
    seq_len_list,
    spec_from_args,
    timing_from_args,
)
from b3core.errors import B3Error
from b3core.spec.step import StepSpec, Timing

# A plan past these is more likely a typo (1-100000 for 1-1000) than an intention: refused
# without --yes
MAX_UNITS = 1000
MAX_PLAN_S = 24 * 3600


class PlanTooLong(Exception):
    """The first unit's time says the whole plan would take more than a day."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="time the training step over many batch sizes")
    p.add_argument(
        "--batch-sizes",
        "--batch_sizes",
        type=batch_size_list,
        required=True,
        help="e.g. 100,127,128,129 or 1-512 or 8-256:8",
    )
    add_fields_as_options(
        p, StepSpec, skip=("batch_size", "mode"), defaults={"model": "simple_cnn"}
    )
    add_fields_as_options(p, Timing)
    p.add_argument(
        "--seq-lens",
        type=seq_len_list,
        default=None,
        help="a sequence model's lengths, e.g. 128,256,512: every (batch, length) is a unit, "
        "interleaved in each pass; tokens/s over length and the fastest tokens/s",
    )
    p.add_argument(
        "--passes",
        type=positive_int,
        default=None,
        help="passes over all sizes, each in a fresh shuffled order; the replicates of the "
        "alignment test (default 5, or --repeats if fewer)",
    )
    p.add_argument("--with-inference", action="store_true", help="time the inference step as well")
    renamed(p, "--inference", "--with-inference")  # --inference means "instead" in b3 step
    p.add_argument("--isolate", action="store_true", help="each size in a fresh process")
    p.add_argument("--memory-budget", type=memory_size, default=None, help="e.g. 8G")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="b3-sweep", help="folder for sweep.{jsonl,csv,json,png}")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    p.add_argument(
        "--yes",
        action="store_true",
        help=f"run a plan of more than {MAX_UNITS} units, or of more than a day by the first "
        "unit's time (refused otherwise)",
    )
    launch.add_launch_options(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from b3core.measuring.distributed import process_group
    from b3core.studies.sweep import SweepPlan
    from b3core.workloads.build import resolve

    timing = timing_from_args(args)
    if args.seq_lens and args.seq_len:
        raise B3Error("give --seq-len or --seq-lens, not both")
    plan = SweepPlan(
        base=spec_from_args(args, batch_size=args.batch_sizes[0], mode="train"),
        seq_lens=tuple(args.seq_lens or ()),
        batch_sizes=tuple(args.batch_sizes),
        timing=timing,
        passes=args.passes or min(5, timing.repeats),
        inference=args.with_inference,
        isolate=args.isolate,
        memory_budget=args.memory_budget,
        seed=args.seed,
    )
    device = resolve(plan.base).device  # what cannot run fails before any file is written
    for length in plan.seq_lens:  # a length the model does not take, too
        resolve(plan.base.replace(seq_len=length))
    units = len(plan.units())
    if units > MAX_UNITS and not args.yes:
        raise B3Error(
            f"the plan has {units} units ({plan_shape(plan)}), more than {MAX_UNITS}: check "
            "--batch-sizes, or give --yes"
        )
    if plan.memory_budget is None and device.type != "cuda":
        from b3core.measuring.memory import default_host_budget

        plan = dataclasses.replace(plan, memory_budget=default_host_budget())
        print(
            f"no --memory-budget: a size over {plan.memory_budget / 2**20:.0f} MiB (a quarter "
            "of the memory available) is recorded as out of memory",
            file=sys.stderr,
        )
    if launch.wanted(args):
        if plan.isolate:
            raise B3Error("--isolate runs each size in a fresh process; not with --nproc-per-node")
        return launch.run_ranks(args, args.argv)
    with process_group(device) as rank:
        return _sweep(args, plan, rank)


def plan_shape(plan) -> str:
    """ "9 sizes x 3 lengths x 5 passes, train and inference"."""
    lengths = f" x {len(plan.seq_lens)} lengths" if plan.seq_lens else ""
    modes = ", train and inference" if plan.inference else ""
    return f"{len(plan.batch_sizes)} sizes{lengths} x {plan.passes} passes{modes}"


def _sweep(args: argparse.Namespace, plan, rank) -> int:
    """The sweep on this process; under data parallel every rank runs it, rank 0 alone writes
    the log (the others follow it, so all agree on what is left) and the reports."""
    import torch
    from tqdm import tqdm

    from b3core.measuring.machine import machine_record
    from b3core.studies.sweep import SweepLog, run_sweep

    lead = rank is None or rank.rank == 0
    machine = machine_record()
    if lead:
        log = SweepLog.open(args.out, plan, resume=args.resume, machine=machine)
    if rank is not None:
        torch.distributed.barrier()  # rank 0's log exists (or was checked) before the others read
        if not lead:
            log = SweepLog.follow(args.out)
    total = len(plan.units())
    bar = tqdm(
        total=total,
        initial=min(len(log.records), total),
        desc="b3 sweep",
        unit="unit",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if lead else True,
    )

    began, first = time.monotonic(), [True]

    def on_unit(unit, record) -> None:
        length = f" L={unit.seq_len}" if unit.seq_len else ""
        bar.set_postfix_str(f"{unit.mode} bs={unit.batch_size}{length} pass {unit.pass_index + 1}")
        bar.update(1)
        if first[0] and record is not None:
            first[0] = False
            left = total - len(log.records)
            estimate = (time.monotonic() - began) * left
            bar.write(
                f"b3 sweep: {total} units ({plan_shape(plan)}); the first took "
                f"{time.monotonic() - began:.1f} s, so about {estimate / 60:.0f} min for the "
                f"{left} left",
                file=sys.stderr,
            )
            if estimate > MAX_PLAN_S and not args.yes:
                raise PlanTooLong(
                    f"about {estimate / 3600:.0f} h by the first unit's time, more than a day: "
                    f"check --batch-sizes, or continue with --resume --yes"
                )

    # Each unit is appended to the log as it finishes; the reports are written once, at the end
    # or on interrupt, so that no presenting happens between timed units.
    try:
        run_sweep(plan, log, on_unit=on_unit)
    except PlanTooLong as refused:
        bar.close()
        raise B3Error(f"{refused} (the first unit is saved in {log.path})") from None
    except KeyboardInterrupt:
        bar.close()
        if not lead:
            return 130
        _write_reports(args.out, plan, log.records.values(), machine)
        print(
            f"b3 sweep: interrupted; {len(log.records)} of {total} units are saved in "
            f"{log.path} (reports written from them); continue with --resume",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
    if not lead:
        return 0
    written, summary = _write_reports(args.out, plan, log.records.values(), machine)
    print(summary)
    print(f"\nwrote {', '.join(str(p) for p in written)} (raw units: {log.path})")
    return 0


def _write_reports(out: str, plan, records, machine: dict):
    """The files and the text summary from the logged units: one sweep, or one per length."""
    from b3core.reports.sweep_report import (
        render_length_summary,
        render_sweep_summary,
        write_length_sweep_report,
        write_sweep_report,
    )
    from b3core.studies.sweep import aggregate, aggregate_by_length

    if plan.seq_lens:
        by_length = aggregate_by_length(records)
        return write_length_sweep_report(out, by_length, machine), render_length_summary(by_length)
    sweep = aggregate(records)
    return write_sweep_report(out, sweep, machine), render_sweep_summary(sweep)
