"""`b3 converge`: steps, samples and seconds to a target validation accuracy at several batch
sizes, from several seeds each; saved run by run, resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from b3core.cli.options import add_fields_as_options, spec_from_args, write_json
from b3core.spec.converge import (
    DEFAULT_BASE_LR,
    DEFAULT_MODEL,
    DEFAULT_OPTIMIZER,
    ConvergeSpec,
)
from b3core.spec.step import StepSpec

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
    from b3core.studies.converge import ConvergeLog, prepare_study, run_study
    from b3core.workloads.build import check_buildable, target_device

    spec = ConvergeSpec(**{name: getattr(args, name) for name in ConvergeSpec.__dataclass_fields__})
    step = spec_from_args(args, batch_size=min(spec.batch_sizes), mode="train")
    check_buildable(step)
    step, splits = prepare_study(spec, step)
    machine = machine_record()
    log = ConvergeLog.open(args.out, spec, step, resume=args.resume, machine=machine)
    total = spec.seeds * len(spec.batch_sizes)
    done = sum(1 for key in log.runs if key[0] in spec.batch_sizes and key[1] < spec.seeds)
    bar = tqdm(total=total, initial=done, desc="b3 converge", unit="run", file=sys.stderr)

    def on_run(run: dict) -> None:
        state = "diverged" if run["diverged"] else ("reached" if run["reached"] else "missed")
        bar.set_postfix_str(f"batch {run['batch_size']} seed {run['seed']}: {state}")
        bar.update(1)

    try:
        run_study(spec, step, splits, target_device(step), log, on_run)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"b3 converge: interrupted; {len(log.runs)} runs are saved in {log.path}; "
            "continue with --resume",
            file=sys.stderr,
        )
        write_report(args.out, spec, step, log, machine)
        return 130
    bar.close()
    print(write_report(args.out, spec, step, log, machine))
    return 0


def write_report(out: str, spec: ConvergeSpec, step: StepSpec, log, machine: dict) -> str:
    """converge.csv (per batch), converge.json (the summary and every run) and converge.png,
    from the runs of this study's sizes and seeds; returns the printed table and notes."""
    from b3core.reports.converge_report import display_frame, knee, plot_study, summary_frame
    from b3core.studies.converge import CLOCK

    runs = [
        run
        for (batch, seed), run in sorted(log.runs.items())
        if batch in spec.batch_sizes and seed < spec.seeds
    ]
    if not runs:
        return "no finished runs yet"
    folder = Path(out)
    summary = summary_frame(runs)
    summary.to_csv(folder / "converge.csv", index=False)
    title = (
        f"{step.model} on {spec.dataset}, target {spec.target_accuracy:g}, {step.optimizer} "
        f"lr {step.lr:g} at batch {spec.reference_batch} ({spec.lr_rule} rule), {spec.seeds} seeds"
    )
    plot_study(runs, summary, spec.target_accuracy, folder / "converge.png", title)
    critical = knee(summary)
    scales = summary["noise_scale"].dropna()
    noise = float(scales.mean()) if len(scales) else None
    write_json(
        folder / "converge.json",
        {
            "study": spec.to_dict(),
            "step": step.to_dict(),
            "clock": CLOCK,
            "machine": machine,
            "knee_batch": critical,
            "noise_scale": noise,
            "summary": summary.to_dict(orient="records"),
            "runs": runs,
        },
    )
    lines = [title, display_frame(summary).to_markdown(index=False)]
    lines.append(f"seconds: training steps only ({CLOCK})")
    if critical is not None:
        lines.append(f"knee: batch {critical} is the largest within 2x of perfect step scaling")
    if noise is not None:
        lines.append(f"gradient noise scale B_simple ~ {noise:.0f} (mean over runs' final)")
    elif step.accumulation_steps < 2:
        lines.append("noise scale: give --accumulation-steps 2 or more to measure it")
    lines.append(f"saved in {folder}/converge.{{jsonl,csv,json,png}}")
    return "\n".join(lines)
