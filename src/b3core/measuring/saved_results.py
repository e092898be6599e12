"""Reading saved results back: pytest-benchmark JSON files written with b3's extra_info."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from b3core.errors import B3Error
from b3core.measuring.result import StepResult


@dataclass(frozen=True)
class ResultSet:
    """The b3 results of one file, and where they were measured."""

    path: Path
    machine_slug: str | None
    results: tuple[StepResult, ...]


def _result_from_benchmark(record: dict) -> StepResult | None:
    info = record.get("extra_info") or {}
    if "b3_result" in info:
        return StepResult.from_dict(info["b3_result"])
    if "b3_spec" in info:  # b3 0.1 kept the record flat in extra_info
        return StepResult.from_dict(info)
    return None  # a benchmark that is not a b3 case (the overhead check, say)


def load_benchmark_json(path: str | Path) -> ResultSet:
    """One `--benchmark-json` (or autosaved) file; anything unreadable is a one-line B3Error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise B3Error(f"results file {str(path)!r} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise B3Error(f"results file {str(path)!r} is corrupt: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise B3Error(f"results file {str(path)!r} is not pytest-benchmark JSON (no 'benchmarks')")
    try:
        results = [r for r in map(_result_from_benchmark, data["benchmarks"]) if r is not None]
    except (KeyError, TypeError, ValueError, AttributeError, B3Error) as exc:
        raise B3Error(f"results file {str(path)!r} is corrupt: bad b3 record ({exc!r})") from None
    if not results:
        raise B3Error(f"results file {str(path)!r} holds no b3 benchmark results")
    machine = data.get("machine_info") or {}
    return ResultSet(path, machine.get("b3_slug"), tuple(results))


def source_labels(sets: list[ResultSet]) -> list[str]:
    """Name each file by its machine slug; where slugs repeat, add the file's name."""
    slugs = [s.machine_slug or s.path.stem for s in sets]
    if len(set(slugs)) == len(slugs):
        return slugs
    return [f"{slug}:{s.path.stem}" for slug, s in zip(slugs, sets)]
