"""What each file b3 saves is: every JSON and JSON-lines file carries
`"format": "b3/<kind>/<n>"`, and one written in an older format is read through its kind's
upgrade, one version at a time. Files from before this field are version 0 of their kind.
Torch-free, so that saved results load anywhere."""

from __future__ import annotations

from collections.abc import Callable

from b3core.errors import B3Error

# kind -> the format this b3 writes
CURRENT = {
    "step": 1,
    "run": 1,
    "find-max": 1,
    "memory": 1,
    "memory-surface": 1,
    "advise": 1,
    "compare": 1,
    # align 2: blocks name their unit ("16"), not their size; 3: a block is one timed call, and
    # `steps_per_block` replaces `shapes` (so does plan 2's "interleaved")
    "align": 3,
    "plan": 2,
    "result": 1,  # a measured step's record, inside the files of the other kinds
    "scale": 1,
    "sweep": 2,
    "sweep-log": 1,
    "converge": 1,
    "converge-log": 1,
}
_UPGRADES: dict[tuple[str, int], Callable[[dict], dict]] = {}


def tag(kind: str) -> str:
    return f"b3/{kind}/{CURRENT[kind]}"


def stamped(kind: str, payload: dict) -> dict:
    """The payload with its format first."""
    return {"format": tag(kind), **{k: v for k, v in payload.items() if k != "format"}}


def upgrade(kind: str, from_version: int):
    """Registers fn(payload) -> payload as the step from `from_version` to the next."""

    def register(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
        _UPGRADES[kind, from_version] = fn
        return fn

    return register


# b3 0.2 to 0.3 wrote these files in today's shape, without a "format"
for _kind in (
    "step",
    "run",
    "find-max",
    "memory",
    "advise",
    "compare",
    "scale",
    "sweep",
    "converge",
):
    _UPGRADES[_kind, 0] = dict


@upgrade("sweep", 1)
def _sweep_alignment_was_welch(payload: dict) -> dict:
    """Version 1's alignment entries were Welch tests over the passes (differences in samples/s
    and p-values): they stay as they were, apart, and no paired verdict is made up for them."""
    upgraded = dict(payload)
    upgraded["alignment_welch"] = upgraded.pop("alignment", [])
    upgraded["alignment"] = []
    return upgraded


def version_of(payload: dict, kind: str, where: str) -> int:
    """The payload's version of `kind` (0 before formats); another kind, or a newer version
    than this b3 reads, is a one-line B3Error naming `where`."""
    text = payload.get("format") if isinstance(payload, dict) else None
    if text is None:
        return 0
    parts = str(text).split("/")
    if len(parts) != 3 or parts[0] != "b3" or not parts[2].isdigit():
        raise B3Error(f"{where}: unknown format {text!r}")
    if parts[1] != kind:
        raise B3Error(f"{where} is a b3 {parts[1]} file, not a {kind} file")
    version = int(parts[2])
    if version > CURRENT[kind]:
        raise B3Error(
            f"{where} was written by a newer b3 ({text}; this b3 reads up to {tag(kind)}): "
            "upgrade b3"
        )
    return version


def upgraded(kind: str, payload: dict, where: str) -> dict:
    """The payload in the current format of its kind, through each upgrade in turn."""
    version = version_of(payload, kind, where)
    while version < CURRENT[kind]:
        step = _UPGRADES.get((kind, version))
        if step is None:
            raise B3Error(f"{where}: b3 cannot read version {version} of a {kind} file")
        try:
            payload = step(payload)
        except B3Error as exc:
            raise B3Error(f"{where}: {exc}") from None
        version += 1
    return stamped(kind, payload)
