"""The `b3` command line. Each subcommand parses, calls the library, and prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .devices import DEVICE_CHOICES, PRECISIONS, mixed_precision_for, resolve_device
from .errors import B3Error, StepOutOfMemory
from .validate import parse_positive_int

# --- argument types: bad values become one-line argparse errors (exit 2) ----------------------


def argument_type(parse: Callable[[str], object], name: str) -> Callable[[str], object]:
    """An argparse type from a library parser: its B3Error becomes argparse's one-line error."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except B3Error as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name} ")) from None

    convert.__name__ = name
    return convert


positive_int = argument_type(lambda text: parse_positive_int("value", text), "value")


non_negative_int = argument_type(lambda text: parse_positive_int("value", text, 0), "value")


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; b3 promises one line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# --- subcommands ------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from .models import count_parameters, create_model, get_model_spec, list_models

    names = list_models(args.pattern)
    if not names:
        raise B3Error(f"no model matches {args.pattern!r}")
    rows = []
    for name in names:
        spec = get_model_spec(name)
        rows.append(
            {
                "model": name,
                "parameters": f"{count_parameters(create_model(name)):,}",
                "input": "x".join(map(str, spec.input_shape())),
                "classes": spec.num_classes,
                "description": spec.description,
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


def cmd_machine(args: argparse.Namespace) -> int:
    from .machine import machine_record

    record = machine_record()
    if args.json:
        print(json.dumps(record, indent=2))
    elif args.asv:
        from .asv_support import register_asv_machine

        register_asv_machine(record, config=args.asv_config)
        print(record["slug"])
    else:
        print(record["slug"])
    return 0


def add_model_options(p: argparse.ArgumentParser) -> None:
    """What is trained: shared by step, sweep, find-max-batch and memory."""
    p.add_argument("--model", default="simple_cnn", help="a registered model (see `b3 models`)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="fp16 uses a GradScaler")
    p.add_argument(
        "--accumulation-steps",
        "--accumulation_steps",
        type=positive_int,
        default=1,
        help="micro-batches of --batch-size per optimizer step",
    )
    p.add_argument(
        "--image-size",
        "--image_size",
        type=positive_int,
        default=None,
        help="override the model's default input size",
    )
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--lr", "--learning-rate", "--learning_rate", type=float, default=5e-4)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile (first call reported apart)"
    )
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)}")
    add_cudnn_option(p)


def add_cudnn_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-cudnn-benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        help="keep cuDNN's autotuner off (it is on by default on CUDA)",
    )


def add_timing_options(p: argparse.ArgumentParser, repeats_help: str = "timed steps") -> None:
    p.add_argument("--repeats", type=positive_int, default=10, help=repeats_help)
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps first (>= 2)")


def _memory_size(text: str) -> int:
    from .memory import parse_memory_size

    return parse_memory_size(text)


def _batch_sizes(text: str) -> list[int]:
    from .sizes import parse_batch_sizes

    return parse_batch_sizes(text)


memory_size = argument_type(_memory_size, "memory size")
batch_size_list = argument_type(_batch_sizes, "batch sizes")


def spec_from_args(args: argparse.Namespace, batch_size: int, inference: bool = False):
    from .measure import StepSpec

    return StepSpec(
        model=args.model,
        batch_size=batch_size,
        precision=args.precision,
        accumulation_steps=args.accumulation_steps,
        mode="inference" if inference else "train",
        image_size=args.image_size,
        optimizer=args.optimizer,
        lr=args.lr,
        channels_last=args.channels_last,
        compile=args.compile,
        cudnn_benchmark=args.cudnn_benchmark,
        device=str(resolve_device(args.device)),
    )


def cmd_step(args: argparse.Namespace) -> int:
    from .machine import machine_record
    from .measure import measure
    from .report import describe_step_result

    spec = spec_from_args(args, args.batch_size, inference=args.inference)
    try:
        result = measure(spec, repeats=args.repeats, warmup=args.warmup)
    except StepOutOfMemory as oom:
        raise B3Error(str(oom)) from None
    print(describe_step_result(result))
    if args.json:
        write_json(args.json, {"result": result.to_dict(), "machine": machine_record()})
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .experiment import RunConfig, run_experiment
    from .machine import machine_record
    from .report import experiment_rows, to_text

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


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from .plots import plot_batch_curves
    from .report import comparison_frame, display_frame, results_frame, to_text
    from .results import load_benchmark_json, source_labels

    sets = [load_benchmark_json(path) for path in args.files]
    labels = source_labels(sets)
    frame = pd.concat(
        [results_frame(s.results, source=label) for s, label in zip(sets, labels)],
        ignore_index=True,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [("Results (mean ± SD over rounds)", display_frame(frame))]
    if len(sets) > 1:
        sections.append((f"Median samples/s, compared with {labels[0]}", comparison_frame(frame)))
    markdown = "\n\n".join(f"## {title}\n\n{to_text(table)}" for title, table in sections)
    (out / "report.md").write_text(markdown + "\n")
    frame.to_csv(out / "report.csv", index=False)
    html = "\n".join(f"<h2>{title}</h2>\n{table.to_html(index=False)}" for title, table in sections)
    (out / "report.html").write_text(f"<html><body>\n{html}\n</body></html>\n")
    plot = plot_batch_curves(frame, out / "report.png", title="b3: " + ", ".join(labels))
    print(markdown)
    print(f"\nwrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'report.html'}, {plot}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .machine import machine_record
    from .measure import prepare_device
    from .sweep import SweepLog, SweepPlan, aggregate, run_sweep
    from .sweep_report import render_sweep_summary, write_sweep_report

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


def default_cpu_budget() -> int:
    """A quarter of the memory available now: doubling from there stays clear of the OOM killer."""
    from .memory import available_host_memory

    return available_host_memory() // 4


def cmd_find_max_batch(args: argparse.Namespace) -> int:
    from .finder import find_max_batch, fit_memory_model
    from .machine import machine_record
    from .memory_model import analytic_fixed_memory, prediction_error

    spec = spec_from_args(args, args.start)
    device = resolve_device(spec.device)
    budget = args.memory_budget
    if budget is None and device.type != "cuda":
        budget = default_cpu_budget()
        print(f"no --memory-budget: using a quarter of available memory, {budget / 2**20:.0f} MiB")
    print(
        f"finding the largest batch for {spec.model} ({spec.precision}) on {device}"
        + (f" within {budget / 2**20:.0f} MiB" if budget else ""),
        flush=True,
    )
    fit = fit_memory_model(spec, args.fit_sizes, memory_budget=budget, isolate=args.isolate)
    target = budget or (
        machine_record()["gpus"][0]["memory_bytes"] if device.type == "cuda" else None
    )
    predicted = fit.max_batch_for(target) if fit and target and fit.per_sample_bytes > 0 else None

    def show(probe) -> None:
        what = f"fits, peak {probe.peak_bytes / 2**20:.0f} MiB" if probe.fits else probe.reason
        print(f"  probe batch {probe.batch_size:>6}: {what} ({probe.seconds:.1f} s)", flush=True)

    result = find_max_batch(
        spec,
        memory_budget=budget,
        start=args.start,
        limit=args.limit,
        isolate=args.isolate,
        safety_margin=args.safety_margin,
        on_probe=show,
    )
    if result.max_batch == 0:
        print("not even batch 1 fits")
    else:
        edge = "reached --limit" if result.hit_limit else "exact edge"
        print(f"largest batch that fits: {result.max_batch} ({edge}, {len(result.probes)} probes)")
        print(f"recommended: {result.recommended} (safety margin {args.safety_margin:.0%})")
    payload = result.to_dict()
    if fit:
        print(
            f"memory model: M(B) = {fit.fixed_bytes / 2**20:.1f} MiB + "
            f"{fit.per_sample_bytes / 2**20:.3f} MiB x B, from batches {list(fit.batch_sizes)}"
        )
        payload["memory_fit"] = fit.to_dict()
        analytic = analytic_fixed_memory(spec.model, spec.optimizer, image_size=spec.image_size)
        payload["analytic_fixed_memory"] = analytic.to_dict()
        print(
            f"analytic fixed part: {analytic.total_bytes / 2**20:.1f} MiB "
            f"(weights, gradients and {spec.optimizer} state)"
        )
    if predicted is not None:
        payload["predicted_max_batch"] = predicted
        if result.max_batch and not result.hit_limit:
            error = prediction_error(predicted, result.max_batch)
            payload["prediction_error"] = error
            print(f"predicted largest batch: {predicted} (error {error:+.1%} against the search)")
        else:
            print(f"predicted largest batch: {predicted}")
    if args.json:
        write_json(args.json, {**payload, "machine": machine_record()})
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from .finder import fit_memory_model
    from .memory_model import analytic_fixed_memory

    spec = spec_from_args(args, args.batch_sizes[0])
    fit = fit_memory_model(spec, args.batch_sizes, memory_budget=None, isolate=args.isolate)
    if fit is None:
        raise B3Error("too few batch sizes fitted in memory for a fit; try smaller ones")
    analytic = analytic_fixed_memory(spec.model, spec.optimizer, image_size=spec.image_size)
    for size, peak in zip(fit.batch_sizes, fit.peak_bytes):
        print(f"  batch {size:>6}: peak {peak / 2**20:9.1f} MiB")
    print(
        f"fit: M(B) = {fit.fixed_bytes / 2**20:.1f} MiB + {fit.per_sample_bytes / 2**20:.3f} "
        f"MiB x B (R² = {fit.r_squared:.4f})"
    )
    print(
        f"analytic fixed part: {analytic.total_bytes / 2**20:.1f} MiB "
        f"({analytic.parameters:,} parameters: weights, gradients and {spec.optimizer} state)"
    )
    if args.memory_budget:
        print(
            f"predicted largest batch within {args.memory_budget / 2**20:.0f} MiB: "
            f"{fit.max_batch_for(args.memory_budget)}"
        )
    if args.json:
        from .machine import machine_record

        payload = {
            "fit": fit.to_dict(),
            "analytic": analytic.to_dict(),
            "machine": machine_record(),
        }
        write_json(args.json, payload)
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    import pandas as pd

    from .advise import LrRequest, advise
    from .sweep import aggregate, read_log

    header, records = read_log(Path(args.sweep) / "sweep.jsonl")
    sweep = aggregate(records.values())
    if not sweep.for_mode("train"):
        raise B3Error(f"the sweep in {args.sweep} holds no training results yet")
    found_max = None
    if args.find_max:
        found_max = read_find_max(args.find_max, header["plan"]["base"])
    budget = args.memory_budget
    gpus = header.get("machine", {}).get("gpus") or []
    if budget is None and gpus:
        budget = gpus[0]["memory_bytes"]
    lr = (
        LrRequest(args.base_lr, args.base_batch, args.lr_rule, args.dataset_size)
        if args.base_lr
        else None
    )
    advice = advise(
        sweep,
        memory_fit=sweep.memory_fit("train"),
        memory_budget=budget,
        found_max=found_max,
        batch=args.batch,
        lr=lr,
        target_batch=args.target_batch,
    )
    table = pd.DataFrame(advice.rows(), columns=["question", "answer"])
    print(table.to_markdown(index=False))
    if args.json:
        write_json(args.json, advice.to_dict())
    return 0


def read_find_max(path: str, swept: dict) -> int:
    """The measured edge from a `find-max-batch --json` file, if it is for the swept setup."""
    try:
        data = json.loads(Path(path).read_text())
        max_batch, spec = int(data["max_batch"]), dict(data["spec"])
    except FileNotFoundError:
        raise B3Error(f"find-max-batch file {path!r} does not exist") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise B3Error(f"find-max-batch file {path!r} is corrupt ({exc!r})") from None
    keys = ("model", "precision", "image_size", "optimizer", "channels_last", "device")
    differ = [k for k in keys if spec.get(k) != swept.get(k)]
    if differ:
        found = ", ".join(f"{k} {spec.get(k)!r} vs {swept.get(k)!r}" for k in differ)
        raise B3Error(f"find-max-batch file {path!r} is for another setup than the sweep: {found}")
    return max_batch


# --- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="b3", description="b3, the Basic Batchsize Benchmark")
    parser.add_argument("--version", action="version", version=f"b3 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'resnet*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("machine", help="print this machine's slug (or its full record)")
    p.add_argument("--json", action="store_true", help="print the full machine record")
    p.add_argument("--asv", action="store_true", help="register the slug as asv's machine name")
    p.add_argument("--asv-config", default="asv.conf.json")
    p.set_defaults(func=cmd_machine)

    p = sub.add_parser("step", help="time the training (or inference) step on a device batch")
    p.add_argument("--batch-size", "--batch_size", type=positive_int, required=True)
    add_model_options(p)
    add_timing_options(p)
    p.add_argument("--inference", action="store_true", help="time the inference step instead")
    p.add_argument("--json", metavar="PATH", help="write the full result and machine record")
    p.set_defaults(func=cmd_step)

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

    p = sub.add_parser("find-max-batch", help="the largest batch whose training steps fit")
    add_model_options(p)
    p.add_argument(
        "--memory-budget",
        type=memory_size,
        default=None,
        help="cap memory (e.g. 2G); on CPU the default is a quarter of what is free",
    )
    p.add_argument("--start", type=positive_int, default=1)
    p.add_argument("--limit", type=positive_int, default=65536)
    p.add_argument("--isolate", action="store_true", help="each probe in a fresh process")
    p.add_argument("--safety-margin", type=float, default=0.10)
    p.add_argument(
        "--fit-sizes",
        type=batch_size_list,
        default=[8, 16, 32, 64],
        help="batch sizes for the memory model's prediction",
    )
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_find_max_batch)

    p = sub.add_parser("memory", help="fit the memory model M(B) = fixed + per_sample * B")
    p.add_argument("--batch-sizes", "--batch_sizes", type=batch_size_list, default=[8, 16, 32, 64])
    add_model_options(p)
    p.add_argument("--memory-budget", type=memory_size, default=None)
    p.add_argument("--isolate", action="store_true", help="each size in a fresh process")
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("advise", help="which batch size to use, from a sweep")
    p.add_argument("--sweep", required=True, help="a `b3 sweep --out` folder")
    p.add_argument("--find-max", default=None, help="a `b3 find-max-batch --json` file")
    p.add_argument("--memory-budget", type=memory_size, default=None)
    p.add_argument("--batch", type=positive_int, default=None, help="the batch to advise on")
    p.add_argument("--base-lr", type=float, default=None, help="reference learning rate")
    p.add_argument("--base-batch", type=positive_int, default=128, help="its batch size")
    p.add_argument("--lr-rule", choices=("linear", "sqrt"), default="linear")
    p.add_argument("--dataset-size", type=positive_int, default=None, help="for warm-up steps")
    p.add_argument(
        "--target-batch",
        type=positive_int,
        default=None,
        help="effective batch to reach with accumulation",
    )
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_advise)

    p = sub.add_parser("report", help="tables and plots from pytest-benchmark JSON files")
    p.add_argument("files", nargs="+", help="--benchmark-json or autosaved files; several compare")
    p.add_argument("--out", default="b3-report", help="folder for report.{md,csv,html,png}")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except B3Error as exc:
        print(f"b3 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"b3 {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `b3 ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
