"""`b3 run`: B3's experiment (train N epochs through a DataLoader, then time inference)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from b3core.errors import B3Error
from b3core.workloads.devices import PRECISIONS, mixed_precision_for, resolve_device

from .options import (
    add_cudnn_option,
    boolean,
    non_negative_int,
    positive_int,
    write_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="B3's experiment: train N epochs, then time inference")
    p.add_argument("--model", default="mobilenet_v3_large")
    p.add_argument("--batch-size", "--batch_size", type=positive_int, default=128)
    p.add_argument("--num-epochs", "--num_epochs", type=positive_int, default=1)
    p.add_argument(
        "--mixed-precision",
        "--mixed_precision",
        type=boolean,
        default=False,
        help="true: fp16 AMP on CUDA, the best mixed precision elsewhere",
    )
    p.add_argument("--precision", choices=PRECISIONS, default=None)
    p.add_argument("--accumulation-steps", "--accumulation_steps", type=positive_int, default=1)
    p.add_argument("--device", "--accelerator", default="auto")
    p.add_argument("--repeats", type=positive_int, default=1, help="independent runs")
    p.add_argument("--seed", "--random-seed", "--random_seed", type=int, default=123)
    p.add_argument("--num-workers", "--num_workers", type=non_negative_int, default=0)
    p.add_argument("--lr", "--learning-rate", "--learning_rate", type=float, default=5e-4)
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--dataset", default="synthetic", choices=("synthetic", "cifar10"))
    p.add_argument("--data-dir", "--data_dir", "--data-path", "--data_path", default=None)
    p.add_argument("--train-size", "--train_size", type=positive_int, default=None)
    p.add_argument("--image-size", "--image_size", type=positive_int, default=None)
    p.add_argument("--channels-last", action="store_true")
    add_cudnn_option(p)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--output-path", "--output_path", default=None, help="folder for b3-run.json")
    p.add_argument("--num-devices", "--num_devices", type=positive_int, default=1)
    p.add_argument("--strategy", default=None)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from b3core.measuring.machine import machine_record
    from b3core.reports.tables import experiment_rows, to_text
    from b3core.studies.experiment import RunConfig, run_experiment

    if args.num_devices > 1 or args.strategy not in (None, "auto", "none"):
        raise B3Error("multi-device (DDP) runs are not supported yet; use one device")
    device = resolve_device(args.device)
    precision = args.precision
    if args.mixed_precision:
        mixed = mixed_precision_for(device)
        if precision not in (None, mixed):
            raise B3Error(
                f"--mixed-precision true means {mixed} here, but --precision is {precision}"
            )
        precision = mixed
    precision = precision or "fp32"
    cfg = RunConfig(
        model=args.model,
        batch_size=args.batch_size,
        num_epochs=args.num_epochs,
        precision=precision,
        accumulation_steps=args.accumulation_steps,
        device=str(device),
        dataset=args.dataset,
        data_dir=args.data_dir,
        train_size=args.train_size,
        image_size=args.image_size,
        num_workers=args.num_workers,
        seed=args.seed,
        lr=args.lr,
        optimizer=args.optimizer,
        channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark,
    )
    how = f"mixed precision: {precision}" if args.mixed_precision else f"precision: {precision}"
    print(
        f"b3 run: {cfg.model}, batch {cfg.batch_size}, {cfg.num_epochs} epoch(s), {how}, "
        f"{cfg.dataset} data, device {device}, {args.repeats} run(s)",
        flush=True,
    )
    result = run_experiment(
        cfg,
        repeats=args.repeats,
        progress=lambda i, n: print(f"  run {i}/{n} done", file=sys.stderr, flush=True),
    )
    print(to_text(experiment_rows(result)))
    pipeline = result.input_pipeline()
    if pipeline:
        print(
            f"input pipeline: {pipeline['overhead_s']:.3g} s of the mean train time "
            f"({pipeline['overhead_fraction']:.0%}) is beyond {pipeline['steps']} steps x "
            f"{pipeline['step_median_s'] * 1e3:.4g} ms, the median of the step timed alone"
        )
    print(
        "times are mean ± SD over runs; warm-up steps ran outside the clock; "
        "the train time includes data loading, as in B3"
    )
    payload = {"result": result.to_dict(), "machine": machine_record()}
    if args.json:
        write_json(args.json, payload)
    if args.output_path:
        write_json(Path(args.output_path) / "b3-run.json", payload)
    return 0
