"""`b3 converge`: steps, samples and seconds to a target validation accuracy at several batch
sizes, from several seeds each; saved run by run, resumable."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from b3core.cli.options import add_fields_as_options, spec_from_args
from b3core.spec.converge import (
    DEFAULT_BASE_LR,
    DEFAULT_MODEL,
    DEFAULT_OPTIMIZER,
    ConvergeSpec,
)
from b3core.spec.step import StepSpec

if TYPE_CHECKING:  # a record only
    from b3core.studies.converge_runs import ConvergeRun

# StepSpec fields a convergence study sets itself: the batch per run, the data set's classes
STUDY_OWNS = ("batch_size", "mode", "num_classes", "input_shape", "input_dtype", "vocab_size")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "converge",
        help="steps and time to a target accuracy per batch size (the accuracy half)",
        description=__doc__.split("\n\n", 1)[0],
    )
    add_fields_as_options(p, ConvergeSpec, required=("batch_sizes",))
    add_fields_as_options(
        p,
        StepSpec,
        skip=STUDY_OWNS,
        defaults={"model": DEFAULT_MODEL, "optimizer": DEFAULT_OPTIMIZER, "lr": DEFAULT_BASE_LR},
        aliases={"lr": ("--base-lr",)},
    )
    p.add_argument("--out", default="b3-converge", help="folder for converge.{jsonl,csv,json,png}")
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    p.set_defaults(func=cmd_converge)


def cmd_converge(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from b3core.measuring.machine import machine_record
    from b3core.reports.converge_report import write_converge_report
    from b3core.studies.converge import ConvergeLog, prepare_study, run_study
    from b3core.workloads.build import resolve

    spec = ConvergeSpec(**{name: getattr(args, name) for name in ConvergeSpec.__dataclass_fields__})
    step = spec_from_args(args, batch_size=min(spec.batch_sizes), mode="train")
    device = resolve(step).device
    step, splits = prepare_study(spec, step)
    machine = machine_record()
    log = ConvergeLog.open(args.out, spec, step, resume=args.resume, machine=machine)
    total = spec.seeds * len(spec.batch_sizes)
    bar = tqdm(
        total=total, initial=len(_runs(log, spec)), desc="b3 converge", unit="run", file=sys.stderr
    )

    def on_run(run: ConvergeRun) -> None:
        bar.set_postfix_str(f"batch {run.batch_size} seed {run.seed}: {_outcome(run)}")
        bar.update(1)

    try:
        run_study(spec, step, splits, device, log, on_run)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"b3 converge: interrupted; {len(log.runs)} runs are saved in {log.path}; "
            "continue with --resume",
            file=sys.stderr,
        )
        write_converge_report(args.out, spec, step, _runs(log, spec), machine)
        return 130
    bar.close()
    print(write_converge_report(args.out, spec, step, _runs(log, spec), machine))
    return 0


def _outcome(run: ConvergeRun) -> str:
    if run.diverged:
        return "diverged"
    if run.out_of_memory:
        return "out of memory"
    return "reached" if run.reached else "missed"


def _runs(log, spec: ConvergeSpec) -> list[ConvergeRun]:
    """The log's runs of this study's sizes and seeds (a resumed log may hold more)."""
    return [
        run
        for (batch, seed), run in sorted(log.runs.items())
        if batch in spec.batch_sizes and seed < spec.seeds
    ]
