"""`b3 step`: time the training (or inference) step on a batch already on the device."""

from __future__ import annotations

import argparse

from b3core.cli import launch
from b3core.cli.options import (
    add_fields_as_options,
    spec_from_args,
    timing_from_args,
    write_json,
)
from b3core.spec.step import StepSpec, Timing


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("step", help="time the training (or inference) step on a device batch")
    add_fields_as_options(p, StepSpec, required=("batch_size",), defaults={"model": "simple_cnn"})
    add_fields_as_options(p, Timing)
    p.add_argument("--json", metavar="PATH", help="write the full result and machine record")
    launch.add_launch_options(p)
    p.set_defaults(func=cmd_step)


def cmd_step(args: argparse.Namespace) -> int:
    from b3core.measuring.distributed import process_group
    from b3core.measuring.machine import machine_record
    from b3core.measuring.runner import measure
    from b3core.reports.tables import describe_step_result
    from b3core.workloads.build import resolve

    spec, timing = spec_from_args(args), timing_from_args(args)
    step = resolve(spec)  # bad input fails here, once, not in every rank
    if launch.wanted(args):
        return launch.run_ranks(args, args.argv)
    with process_group(step.device) as rank:
        result = measure(step, timing)
    if rank is None or rank.rank == 0:
        print(describe_step_result(result))
        if args.json:
            write_json(args.json, "step", {"result": result.to_dict(), "machine": machine_record()})
    return 0
