"""b3core: the library behind b3, the Basic Batchsize Benchmark.

The public API, importable from the top (`from b3core import StepSpec, measure`). Names load
on first use, so that the torch-free layers (the spec, saved results) stay torch-free.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path


def _version() -> str:
    """pyproject.toml's version, the one declaration: from the source tree this package was
    imported from (a checkout, or a side's worktree in `b3 compare`), else from the installed
    package's metadata."""
    tree = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if tree.is_file():
        found = re.search(r'^version\s*=\s*"([^"]+)"', tree.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    return importlib.metadata.version("b3core")


__version__ = _version()

_PUBLIC = {
    "StepSpec": "b3core.spec.step",
    "Timing": "b3core.spec.step",
    "B3Error": "b3core.errors",
    "StepOutOfMemory": "b3core.errors",
    "measure": "b3core.measuring.runner",
    "run_guarded": "b3core.measuring.runner",
    "prepare": "b3core.measuring.runner",
    "StepResult": "b3core.measuring.result",
    "Measurement": "b3core.measuring.stats",
    "create_model": "b3core.workloads.models",
    "list_models": "b3core.workloads.models",
    "register_model": "b3core.workloads.models",
    "model_inputs": "b3core.workloads.model_sources",
    "load_benchmark_json": "b3core.measuring.saved_results",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'b3core' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
