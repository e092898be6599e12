"""A device's peak FLOP/s for a step's precision: the denominator of MFU.

GPUs: the vendor's dense (no sparsity) tensor-core figure for the precision, from the table
below with its datasheet. CPUs: this machine's own dense matmul rate, measured once per dtype
and thread count (the best of a few large matrix products) and cached on disk, so that every
later step on this machine divides by the same figure. `--peak-tflops` overrides both.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from b3core.files import atomic_write
from b3core.measuring.clocks import time_block
from b3core.measuring.machine import device_name
from b3core.measuring.result import Peak


@dataclass(frozen=True)
class GpuPeak:
    """Dense TFLOP/s per precision for the GPUs whose names contain every one of `names` and
    none of `unless`."""

    names: tuple[str, ...]
    tflops: dict[str, float]
    datasheet: str
    unless: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        return all(n in name for n in self.names) and not any(n in name for n in self.unless)


_H100 = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"
_V100 = (
    "https://images.nvidia.com/content/technologies/volta/pdf/"
    "volta-v100-datasheet-update-us-1165301-r5.pdf"
)
# First match wins: the more specific names come first. fp16 and bf16 are autocast's, whose
# matrix products run on the tensor cores in that dtype.
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak(("H100", "NVL"), {"fp32": 60, "tf32": 417.5, "bf16": 835, "fp16": 835}, _H100),
    GpuPeak(("H100", "PCIe"), {"fp32": 51, "tf32": 378, "bf16": 756, "fp16": 756}, _H100),
    GpuPeak(("H100",), {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, _H100),
    GpuPeak(
        ("H200", "NVL"),
        {"fp32": 60, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
        "https://www.nvidia.com/en-us/data-center/h200/",
    ),
    GpuPeak(
        ("H200",),
        {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
        "https://www.nvidia.com/en-us/data-center/h200/",
    ),
    GpuPeak(
        ("A100",),
        {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312},
        "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
        "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
    ),
    GpuPeak(
        ("L40S",),
        {"fp32": 91.6, "tf32": 183, "bf16": 362.05, "fp16": 362.05},
        "https://www.nvidia.com/en-us/data-center/l40s/",
    ),
    GpuPeak(
        ("L4",),
        {"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121},
        "https://www.nvidia.com/en-us/data-center/l4/",
        unless=("L40",),
    ),
    GpuPeak(
        ("A10",),
        {"fp32": 31.2, "tf32": 62.5, "bf16": 125, "fp16": 125},
        "https://www.nvidia.com/en-us/data-center/products/a10-gpu/",
        unless=("A100", "A10G"),
    ),
    GpuPeak(("V100S",), {"fp32": 16.4, "fp16": 130}, _V100),
    GpuPeak(("V100", "PCIE"), {"fp32": 14, "fp16": 112}, _V100),
    GpuPeak(("V100",), {"fp32": 15.7, "fp16": 125}, _V100),
    GpuPeak(
        ("T4",),
        {"fp32": 8.1, "fp16": 65},
        "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf",
    ),
)

_MATMUL_DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
MATMUL_TRIES = 5
MIN_MATMUL_SECONDS = 0.05  # the product is grown until one takes this long
MAX_MATMUL_SIZE = 4096


def device_peak(
    device: torch.device, precision: str, peak_tflops: float | None = None
) -> Peak | None:
    """The peak that MFU divides by, with where it came from; None for a GPU not in the table
    (give --peak-tflops) or an MPS device."""
    if peak_tflops is not None:
        return Peak(peak_tflops * 1e12, "--peak-tflops")
    if device.type == "cuda":
        name = device_name(device)
        for entry in GPU_PEAKS:
            if entry.matches(name) and precision in entry.tflops:
                return Peak(
                    entry.tflops[precision] * 1e12,
                    f"{name} datasheet, dense {precision}: {entry.datasheet}",
                )
        return None
    if device.type == "cpu":
        return cpu_matmul_peak(_MATMUL_DTYPES[precision])
    return None


def cache_dir() -> Path:
    """Where b3 keeps what it measured about this machine (B3_CACHE_DIR overrides)."""
    return Path(os.environ.get("B3_CACHE_DIR") or Path.home() / ".cache" / "b3")


def _machine_key(dtype: torch.dtype) -> str:
    return "|".join(
        (
            device_name(torch.device("cpu")),
            f"cores={os.cpu_count()}",
            f"threads={torch.get_num_threads()}",
            f"torch={torch.__version__}",
            str(dtype).removeprefix("torch."),
        )
    )


def cpu_matmul_peak(dtype: torch.dtype) -> Peak:
    """This CPU's dense matmul rate in `dtype` at the current thread count: read from the cache,
    else measured (a few seconds) and written there."""
    path = cache_dir() / "matmul-peaks.json"
    key = _machine_key(dtype)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        flops_per_s, size = measure_matmul_rate(torch.device("cpu"), dtype)
        cached[key] = {"flops_per_s": flops_per_s, "size": size, "measured": time.time()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(cached, indent=1))
        except OSError:
            pass  # a read-only home: measured again next time
    entry = cached[key]
    return Peak(
        entry["flops_per_s"],
        f"measured: best of {MATMUL_TRIES} {entry['size']}x{entry['size']} "
        f"{str(dtype).removeprefix('torch.')} matmuls on {torch.get_num_threads()} thread(s), "
        f"cached in {path}",
    )


def measure_matmul_rate(device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """The best FLOP/s of square matrix products on `device`, grown until one product takes
    MIN_MATMUL_SECONDS (or reaches MAX_MATMUL_SIZE), and the size used."""
    size = 256
    while True:
        product = functools.partial(
            torch.matmul,
            torch.randn(size, size, device=device).to(dtype),
            torch.randn(size, size, device=device).to(dtype),
        )
        time_block(product, device)  # warm-up: the library's first call
        if time_block(product, device) >= MIN_MATMUL_SECONDS or size >= MAX_MATMUL_SIZE:
            break
        size *= 2
    best = min(time_block(product, device) for _ in range(MATMUL_TRIES))
    return 2 * size**3 / best, size
