"""asv glue: register this machine under b3's slug, so that asv keeps one history per host and
accelerator (asv's own machine info has no GPU field)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from b3core.errors import B3Error
from b3core.measuring.memory import physical_memory


def asv_machine_args(record: dict) -> list[str]:
    cpu = record["cpu"]
    if record.get("gpu"):
        cpu = f"{cpu}; {record['gpu_count']}x {record['gpu']}"
    return [
        "--machine",
        record["slug"],
        "--os",
        f"{platform.system()} {platform.release()}",
        "--arch",
        platform.machine(),
        "--cpu",
        cpu,
        "--num_cpu",
        str(record["cpu_count"]),
        "--ram",
        str(physical_memory()),
    ]


def register_asv_machine(record: dict, config: str | Path = "asv.conf.json") -> None:
    """`asv machine --yes` with b3's slug as the machine name (written to ~/.asv-machine.json)."""
    if not Path(config).exists():
        raise B3Error(
            f"no asv config at {str(config)!r}; run from the project root or pass --asv-config"
        )
    command = [
        sys.executable,
        "-m",
        "asv",
        "machine",
        "--yes",
        "--config",
        str(config),
        *asv_machine_args(record),
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise B3Error(f"asv machine failed: {detail[-1] if detail else proc.returncode}")
