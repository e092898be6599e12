"""The `b3` command line: one module per subcommand. Each parses, calls the library, and prints."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from b3core import __version__
from b3core.errors import B3Error

from . import (
    advise,
    align,
    compare,
    converge,
    info,
    memory,
    plan,
    publish,
    report,
    run,
    scale,
    step,
    sweep,
)
from .options import OneLineParser

SUBCOMMANDS = (
    info,
    step,
    run,
    sweep,
    align,
    scale,
    converge,
    memory,
    advise,
    plan,
    compare,
    report,
    publish,
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="b3", description="b3, the Basic Batchsize Benchmark")
    parser.add_argument("--version", action="version", version=f"b3 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in SUBCOMMANDS:
        module.register(sub)
    for subparser in sub.choices.values():
        subparser.add_argument(
            "--traceback",
            action="store_true",
            help="on an error, print the full trace (of the user's code, say), not one line",
        )
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (timeout, CI cancellation, schedulers) acts as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    """Every command: its one-line errors, and SIGTERM handled as Ctrl-C (what was measured is
    kept and reported, exit 130)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what ranks launched through torchrun run again
    handler: Callable[[argparse.Namespace], int] = args.func
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return handler(args)
    except B3Error as exc:  # bad input (2), or a step that did not fit (StepOutOfMemory, 1)
        if args.traceback:
            traceback.print_exception(exc)
        print(f"b3 {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"b3 {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `b3 ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
