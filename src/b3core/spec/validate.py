"""Checks of user-given numbers, shared by the library, the CLI and the pytest options."""

from __future__ import annotations

from b3core.errors import B3Error


def parse_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise B3Error(f"value must be a number, got {text!r}") from None


def parse_fraction(text: str) -> float:
    """0.02 or 2%: a fraction strictly between 0 and 1."""
    text = text.strip()
    value = parse_number(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value < 1:
        raise B3Error(f"value must be a fraction between 0 and 1 (or a percentage), got {text!r}")
    return value


def parse_seconds(text: str) -> float:
    return parse_positive_number(text, "number of seconds")


def parse_positive_number(text: str, what: str = "number", *, allow_zero: bool = False) -> float:
    """A number above 0 (at or above 0 with allow_zero); `what` names it in the error."""
    value = parse_number(text)
    if value < 0 or (value == 0 and not allow_zero):
        limit = "not be negative" if allow_zero else "be positive"
        raise B3Error(f"a {what} must {limit}, got {text!r}")
    return value


def require_positive_int(name: str, value: object) -> int:
    """An int of at least 1 (not a bool, not 2.5), or a one-line B3Error naming the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise B3Error(f"{name} must be a positive integer, got {value!r}")
    return value


def parse_positive_int(name: str, text: object, minimum: int = 1) -> int:
    """The same check for text from a command line or an environment variable."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise B3Error(f"{name} must be {kind}, got {text!r}")
    return value


def require_choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, or a one-line B3Error that lists them."""
    if value not in choices:
        raise B3Error(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")
    return value


def parse_positive(text: object) -> int:
    """A positive integer option's value (the option's name is argparse's to say)."""
    return parse_positive_int("value", text)
