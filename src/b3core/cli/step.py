"""`b3 step`: time the training (or inference) step on a batch already on the device."""

from __future__ import annotations

import argparse

from b3core.errors import B3Error, StepOutOfMemory

from .options import (
    add_model_options,
    add_timing_options,
    positive_int,
    spec_from_args,
    write_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("step", help="time the training (or inference) step on a device batch")
    p.add_argument("--batch-size", "--batch_size", type=positive_int, required=True)
    add_model_options(p)
    add_timing_options(p)
    p.add_argument("--inference", action="store_true", help="time the inference step instead")
    p.add_argument("--json", metavar="PATH", help="write the full result and machine record")
    p.set_defaults(func=cmd_step)


def cmd_step(args: argparse.Namespace) -> int:
    from b3core.measuring.machine import machine_record
    from b3core.measuring.runner import measure
    from b3core.reports.tables import describe_step_result

    spec = spec_from_args(args, args.batch_size, inference=args.inference)
    try:
        result = measure(spec, repeats=args.repeats, warmup=args.warmup)
    except StepOutOfMemory as oom:
        raise B3Error(str(oom)) from None
    print(describe_step_result(result))
    if args.json:
        write_json(args.json, {"result": result.to_dict(), "machine": machine_record()})
    return 0
