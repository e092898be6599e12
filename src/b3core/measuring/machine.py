"""Machine identity: recorded with every result, and the slug that names storage and asv."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path

import torch

from b3core.measuring.telemetry import gpu_state


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _torchvision_version() -> str | None:
    """torchvision.__version__ (with its build tag, "+cu130"), read from its version.py: the
    import itself costs a second that a run of b3's own models never needs."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a dependency
        return None
    source = Path(spec.submodule_search_locations[0], "version.py")
    found = re.search(r"^__version__ = '([^']+)'", source.read_text(), re.MULTILINE)
    return found[1] if found else importlib.metadata.version("torchvision")


@functools.cache
def machine_record() -> dict:
    """Everything needed to know whether two results are comparable."""
    record = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpus": [],
        "driver": None,
    }
    if record["gpu_count"]:
        for index in range(record["gpu_count"]):
            props = torch.cuda.get_device_properties(index)
            record["gpus"].append(
                {
                    "name": props.name,
                    "memory_bytes": props.total_memory,
                    "capability": f"{props.major}.{props.minor}",
                    "multiprocessors": props.multi_processor_count,
                    # power limit, application clocks, persistence mode, clock locks (NVML)
                    **gpu_state(torch.device("cuda", index)),
                }
            )
        record["driver"] = _nvidia_driver()
    record["gpu"] = record["gpus"][0]["name"] if record["gpus"] else None
    record["slug"] = machine_slug(record)
    return record


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_slug(record: dict) -> str:
    """Host plus accelerator model, e.g. 'runner7-nvidia-h100-80gb-hbm3' or 'laptop-cpu'.

    Timings are comparable only on the same accelerator, so this names the pytest-benchmark
    storage folder and the asv machine.
    """
    accelerator = record.get("gpu") or "cpu"
    return f"{_slugify(record['host'])}-{_slugify(accelerator)}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return _cpu_name()
