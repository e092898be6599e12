"""The user's own code, named `package.module:function`: found, imported and called with only
the keyword arguments it declares. Every failure is one line that names what was asked for; the
cause stays chained for `--traceback`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from b3core.errors import B3Error

TRACEBACK_HINT = "run with --traceback for the full trace"


def is_import_path(name: str) -> bool:
    return ":" in name


def load_object(path: str, what: str) -> object:
    """The object that `module:attribute` (attribute may be dotted) names."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise B3Error(f"{what} {path!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raised on import
        raise B3Error(
            f"{what} {path!r}: module {module_name!r} does not import "
            f"({type(exc).__name__}: {first_line(exc)}); {TRACEBACK_HINT}"
        ) from exc
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise B3Error(f"{what} {path!r}: module {module_name!r} has no {attribute!r}") from None
    return found


def load_callable(path: str, what: str) -> Callable:
    found = load_object(path, what)
    if not callable(found):
        raise B3Error(f"{what} {path!r} is a {type(found).__name__}, not a function")
    return found


def declared_parameters(fn: Callable) -> set[str] | None:
    """The keyword names `fn` takes; None when it takes any (**kwargs)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def required_parameters(fn: Callable) -> list[str]:
    """The keyword-passable parameters `fn` cannot do without (no default)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def call_with_declared(fn: Callable, available: dict, to_any: tuple[str, ...] = ()) -> object:
    """fn(**the available arguments that fn declares), so a factory may ask for only some; a
    function that takes **kwargs gets those named in `to_any`."""
    names = declared_parameters(fn)
    wanted = to_any if names is None else names
    return fn(**{k: v for k, v in available.items() if k in wanted})


def parameter_default(fn: Callable, name: str) -> object | None:
    try:
        parameter = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""
