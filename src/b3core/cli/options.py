"""Argument types and option groups shared by the subcommands.

Bad values become argparse's one-line errors (exit code 2), never tracebacks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from b3core.errors import B3Error
from b3core.spec.validate import parse_positive_int


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


class _Renamed(argparse.Action):
    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.new}")


def renamed(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """An old spelling, refused in one line that names the new one."""
    p.add_argument(old, action=_Renamed, new=new, dest=argparse.SUPPRESS, default=argparse.SUPPRESS)


def check_writable(args: argparse.Namespace, *options: str) -> None:
    """Output paths fail before the run, not after minutes of measuring."""
    for option in options:
        path = getattr(args, option, None)
        if not path:
            continue
        folder = Path(path).resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise B3Error(f"--{option} {path}: cannot create its folder ({exc.strerror})") from None
        if not os.access(folder, os.W_OK) or Path(path).is_dir():
            raise B3Error(f"--{option} {path}: cannot write there")


def write_json(path: str | Path, kind: str, payload: dict) -> None:
    """A command's JSON file, its format first (spec/formats.py)."""
    from b3core.files import atomic_write
    from b3core.spec.formats import stamped

    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(stamped(kind, payload), indent=2, default=str) + "\n")


def _flags(flags: tuple[str, ...]) -> list[str]:
    """Each dashed long flag with its underscore twin, as B3's own scripts spelled options."""
    out = []
    for flag in flags:
        out.append(flag)
        twin = "--" + flag[2:].replace("-", "_")
        if twin != flag and not flag.startswith("--no-"):
            out.append(twin)
    return out


def add_fields_as_options(
    p: argparse.ArgumentParser,
    cls,
    *,
    skip: tuple[str, ...] = (),
    defaults: dict | None = None,
    required: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Options from a spec dataclass's fields (StepSpec, Timing): their flags, help, choices
    and defaults are declared there, once."""
    defaults, aliases = defaults or {}, aliases or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or "cli" not in f.metadata:
            continue
        cli = dict(f.metadata["cli"])
        flags = _flags((*cli.pop("flags"), *aliases.get(f.name, ())))
        parse = cli.pop("parse", None)
        if parse is not None:
            cli["type"] = argument_type(parse, "value")
        if f.name in required:
            cli["required"] = True
        else:
            default = defaults.get(f.name, f.default)
            cli["default"] = None if default is dataclasses.MISSING else default
            shown = not any(cli["default"] is unshown for unshown in (None, False, True))
            if shown and "default" not in cli["help"]:
                cli["help"] += " (default: %(default)s)"
        p.add_argument(*flags, dest=f.name, **cli)


def fields_as_argv(record) -> list[str]:
    """The command-line options that give a spec record (StepSpec, Timing) its values: the
    inverse of add_fields_as_options, for a command that runs another (b3 scale runs b3 step)."""
    argv: list[str] = []
    for f in dataclasses.fields(record):
        cli, value = f.metadata.get("cli"), getattr(record, f.name)
        if cli is None or value is None or value == f.default:
            continue
        flag, action = cli["flags"][0], cli.get("action")
        if action in ("store_true", "store_false", "store_const"):
            argv.append(flag)  # a value other than the default is the flag's own
        else:
            argv += [flag, str(value)]
    return argv


def record_args(cls, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    """The values of a record's option fields, as parsed: the inverse of add_fields_as_options."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.name not in skip and "cli" in f.metadata
    }


def spec_from_args(args: argparse.Namespace, **overrides):
    """The StepSpec the options describe, on the resolved device ("auto" becomes cpu, cuda, ...)."""
    from b3core.spec.step import StepSpec
    from b3core.workloads.devices import resolve_device

    names = [f.name for f in dataclasses.fields(StepSpec) if hasattr(args, f.name)]
    values = {**{name: getattr(args, name) for name in names}, **overrides}
    values["device"] = str(resolve_device(values["device"]))
    return StepSpec(**values)


def timing_from_args(args: argparse.Namespace, **overrides):
    from b3core.spec.step import Timing

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Timing)}
    return Timing(**{**values, **overrides})


def _memory_size(text: str) -> int:
    from b3core.measuring.memory import parse_memory_size

    return parse_memory_size(text)


def _batch_sizes(text: str) -> list[int]:
    from b3core.spec.sizes import parse_batch_sizes

    return parse_batch_sizes(text)


def _seq_lens(text: str) -> list[int]:
    from b3core.spec.sizes import parse_seq_lens

    return parse_seq_lens(text)


memory_size = argument_type(_memory_size, "memory size")

seq_len_list = argument_type(_seq_lens, "sequence lengths")


batch_size_list = argument_type(_batch_sizes, "batch sizes")
