"""`b3 plan`: which micro-batch, accumulation, checkpointing and precision reach a global batch
fastest within a memory budget; measured, interleaved and decided (studies/plan.py)."""

from __future__ import annotations

import argparse
import functools

from b3core.cli.options import (
    add_fields_as_options,
    check_writable,
    memory_size,
    positive_int,
    record_args,
    spec_from_args,
    write_json,
)
from b3core.errors import B3Error
from b3core.spec.step import CHECKPOINTING, PRECISIONS, StepSpec
from b3core.studies.compare.settings import INTERRUPTED

LEVERS = ("batch_size", "accumulation_steps", "precision", "activation_checkpointing",
          "channels_last", "mode")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    from b3core.studies.lr_rules import LrRequest
    from b3core.studies.plan import PlanSettings

    p = sub.add_parser(
        "plan",
        help="which micro-batch x accumulation, checkpointing and precision reach a global "
        "batch fastest within a memory budget",
        description="Exit codes: 0 planned, 1 a candidate ran out of memory in the interleaved "
        f"timing, 2 bad input, {INTERRUPTED} interrupted.",
    )
    p.add_argument("--global-batch", type=positive_int, required=True, metavar="N",
                   help="samples per optimizer update, over all ranks")  # fmt: skip
    p.add_argument("--memory-budget", type=memory_size, default=None,
                   help="peak memory a candidate may use, e.g. 512MiB or 16GiB (default: the "
                   "GPU's memory; on CPU a quarter of the memory available)")  # fmt: skip
    p.add_argument("--precisions", default=None,
                   help=f"comma-separated, of {', '.join(PRECISIONS)} (default: fp32 on CPU; "
                   "fp32 and bf16, or fp16 without bf16, on CUDA)")  # fmt: skip
    p.add_argument(
        "--checkpointing",
        default="none,blocks",
        help=f"comma-separated, of {', '.join(CHECKPOINTING)} (default: %(default)s)",
    )
    p.add_argument("--nproc-per-node", type=positive_int, default=1,
                   help="ranks that share the global batch: probed, measured and timed as a world "
                   "of data-parallel ranks "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--converge", metavar="DIR",
                   help="a `b3 converge --out` folder that trained the global batch: the "
                   "predicted time to its target")  # fmt: skip
    add_fields_as_options(p, StepSpec, skip=LEVERS, required=("model",))
    add_fields_as_options(p, PlanSettings)
    add_fields_as_options(p, LrRequest)
    p.add_argument("--json", metavar="PATH", help="the table, the recommendation, every block")
    p.add_argument("--plot", metavar="PATH", help="PNG: samples/s against peak memory")
    p.set_defaults(func=cmd_plan)


def _choices(text: str | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    unknown = [c for c in chosen if c not in allowed]
    if not chosen or unknown:
        raise B3Error(f"--{what}: choose from {', '.join(allowed)}, got {text!r}")
    return chosen


def cmd_plan(args: argparse.Namespace) -> int:
    from b3core.measuring.distributed import launched
    from b3core.measuring.memory import default_host_budget
    from b3core.reports.plan_report import (
        closing_lines,
        plan_table,
        plot_plan,
        time_to_target_line,
    )
    from b3core.studies.compare.workers import World
    from b3core.studies.interleaved import OUT_OF_MEMORY_EXIT, fresh_worker
    from b3core.studies.lr_rules import LrRequest
    from b3core.studies.plan import (
        Levers,
        Plan,
        PlanSettings,
        run_plan,
        study_at,
        time_to_target,
        world_of,
    )
    from b3core.workloads.build import resolve
    from b3core.workloads.devices import supported_precisions

    if launched():
        raise B3Error("b3 plan starts its own worker processes: run it without torchrun")
    base = spec_from_args(args, batch_size=1, mode="train")
    step = resolve(base)  # an unknown model or device is one line, before anything runs
    device = step.device
    precisions = _choices(args.precisions, PRECISIONS, "precisions") if args.precisions else (
        ("fp32",) if device.type != "cuda"
        else ("fp32", "bf16" if "bf16" in supported_precisions(device) else "fp16"))  # fmt: skip
    for precision in precisions:
        if precision not in supported_precisions(device):
            raise B3Error(f"--precisions: {precision} is not supported on {device}")
    images = len(step.model_input.shape) == 3
    levers = Levers(
        precisions,
        _choices(args.checkpointing, CHECKPOINTING, "checkpointing"),
        (False, True) if device.type == "cuda" and images else (False,),
    )
    budget = args.memory_budget
    if budget is None:
        if device.type == "cuda":
            import torch

            budget = torch.cuda.get_device_properties(device).total_memory
        else:
            budget = default_host_budget()
    check_writable(args, "json", "plot")
    if args.converge:  # a study that cannot be used is said before minutes of measuring
        study_at(base.model, args.global_batch, args.converge)
    settings = PlanSettings(**record_args(PlanSettings, args))
    lr = LrRequest(**record_args(LrRequest, args))
    lr = lr if lr.base_lr else lr.replace(base_lr=base.lr)
    plan = Plan(base, args.global_batch, args.nproc_per_node, budget, settings)
    world = World(args.nproc_per_node, base.device) if world_of(args.nproc_per_node) else None
    print(
        f"b3 plan: {base.model} on {device}, global batch {args.global_batch} "
        f"within {budget / 2**20:.0f} MiB; levers: {', '.join(precisions)} x checkpointing "
        f"{', '.join(levers.checkpointing)}"
        + (" x channels_last on/off" if len(levers.channels_last) > 1 else ""),
        flush=True,
    )
    stopped: BaseException | None = None
    try:
        run_plan(plan, levers, functools.partial(fresh_worker, world),
                 on_progress=lambda line: print(f"  {line}", flush=True), lr=lr)  # fmt: skip
    except KeyboardInterrupt as exc:  # keep what was measured
        stopped = exc
    if plan.candidates:
        print(plan_table(plan))
        for line in closing_lines(plan):
            print(line)
    failed = plan.run.failure if plan.run else None
    if failed:
        print(f"The interleaved timing stopped: {failed}.")
    payload = plan.to_dict()
    if args.converge and plan.ranking():
        prediction = time_to_target(plan, args.converge)
        print(time_to_target_line(prediction))
        payload["time_to_target"] = prediction
    if args.json:
        write_json(args.json, "plan", payload)
    if args.plot and plan.candidates:
        plot_plan(plan, args.plot)
    if stopped is not None:
        raise stopped
    return OUT_OF_MEMORY_EXIT if failed else 0
