"""Argument types and option groups shared by the subcommands.

Bad values become argparse's one-line errors (exit code 2), never tracebacks."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from b3core.errors import B3Error
from b3core.spec.validate import parse_positive_int
from b3core.workloads.devices import DEVICE_CHOICES, PRECISIONS, resolve_device


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
    from b3core.measuring.memory import parse_memory_size

    return parse_memory_size(text)


def _batch_sizes(text: str) -> list[int]:
    from b3core.spec.sizes import parse_batch_sizes

    return parse_batch_sizes(text)


memory_size = argument_type(_memory_size, "memory size")


batch_size_list = argument_type(_batch_sizes, "batch sizes")


def spec_from_args(args: argparse.Namespace, batch_size: int, inference: bool = False):
    from b3core.measuring.runner import StepSpec

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
