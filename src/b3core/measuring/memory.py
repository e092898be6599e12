"""Peak memory of a step, out-of-memory detection and recovery, and memory budgets."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import resource
import sys
from pathlib import Path

import torch

from b3core.errors import B3Error, MemoryBudgetExceeded
from b3core.measuring.result import PeakMemory

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_bytes(field: str) -> int | None:
    if _STATUS.exists():
        match = re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text())
        if match:
            return int(match.group(1)) * 1024
    return None


def _rss_high_water_mark() -> int:
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _reset_rss_high_water_mark() -> bool:
    """Linux resets VmHWM when "5" is written to clear_refs; elsewhere the peak is process-wide."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _return_freed_heap_to_os() -> None:
    """glibc keeps freed heap pages; trimming them makes the next RSS baseline honest."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto writes a line to the process's stderr (fd 2, below Python) each time a profiler
    starts or stops; b3's own output stays clean."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _TensorMemoryProfile:
    """The exact peak of CPU tensor memory: torch's profiler with profile_memory reports every
    allocation and free of the CPU allocator; the peak is the running sum's maximum. Started
    before the model is built, so weights, optimizer state, data and activations all count.
    (Chosen over RSS, which also moves with glibc's heap, thread stacks and freed pages kept by
    the process; the profiler's costs land only in untimed steps.)"""

    def __init__(self):
        from torch.profiler import ProfilerActivity, profile

        self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)

    def start(self) -> None:
        with _quiet_stderr():
            self.profiler.start()

    def stop(self) -> int:
        with _quiet_stderr():
            self.profiler.stop()
        cpu = torch.autograd.DeviceType.CPU
        events = sorted(
            (e.start_ns(), e.nbytes())
            for e in self.profiler.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == cpu
        )
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        self.profiler = None  # its event list can be large
        return peak


class PeakMemoryTracker:
    """Context manager around a configuration's build, warm-up and timing; `result()` reads
    the peak.

    CUDA: the caching allocator's peak counters, reset on entry (allocated, reserved, and at
    the end what the CUDA context and other processes hold). CPU: the exact peak of tensor
    memory, profiled from the build to the end of the warm-up (`warmed()`), with the resident
    set's growth kept as a secondary figure."""

    def __init__(self, device: torch.device):
        self.device = device
        self._baseline = 0
        self._rss_source = "process_rss_growth"
        self._profile: _TensorMemoryProfile | None = None
        self._tensor_peak: int | None = None

    def __enter__(self) -> PeakMemoryTracker:
        # Memory cached for an earlier configuration would count as this one's peak.
        release_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        _return_freed_heap_to_os()
        if _reset_rss_high_water_mark():
            self._baseline = _proc_status_bytes("VmRSS") or 0
        else:  # no resettable peak here: report the lifetime peak, and say so
            self._rss_source = "process_lifetime_peak_rss"
        if self.device.type == "cpu":
            self._profile = _TensorMemoryProfile()
            self._profile.start()
        return self

    def warmed(self) -> bool:
        """End of the warm-up: the profiled part ends here, so that no timed step pays for it.
        True when a profiler stopped (its overhead was in the steps before)."""
        if self._profile is None:
            return False
        self._tensor_peak = self._profile.stop()
        self._profile = None
        return True

    def __exit__(self, *exc) -> None:
        if self._profile is not None:  # an error before warmed(): stop the profiler anyway
            with _quiet_stderr():
                self._profile.profiler.stop()
            self._profile = None
        return None

    def result(self) -> PeakMemory:
        if self.device.type == "cuda":
            allocated = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
            free, total = torch.cuda.mem_get_info(self.device)
            return PeakMemory(
                allocated,
                reserved,
                "cuda_max_allocated",
                outside_torch_bytes=max(0, total - free - torch.cuda.memory_reserved(self.device)),
                allocator_settings=allocator_settings(),
            )
        rss = max(0, _rss_high_water_mark() - self._baseline)
        if self._tensor_peak is not None:
            return PeakMemory(self._tensor_peak, None, "cpu_tensor_peak", rss_growth_bytes=rss)
        return PeakMemory(rss, None, self._rss_source)


def allocator_settings() -> str | None:
    """The CUDA caching allocator's settings (e.g. expandable_segments:True), as set."""
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_host_memory() -> int:
    """MemAvailable from /proc/meminfo, else the total physical memory."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        match = re.search(r"MemAvailable:\s+(\d+) kB", meminfo.read_text())
        if match:
            return int(match.group(1)) * 1024
    return physical_memory()


def default_host_budget() -> int:
    """The guard of commands that grow the batch on a host without a budget of the user's: a
    quarter of the memory available now, which stays clear of the kernel's OOM killer."""
    return available_host_memory() // 4


def release_memory(device: torch.device) -> None:
    """Collect garbage and empty the device's cache (after an OOM, the caller drops its
    references first)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory_size(text: str) -> int:
    """'512M', '1.5GiB', '2G', '1000000' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise B3Error(f"cannot parse memory size {text!r}; use e.g. 512M, 1.5G or 2GiB")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value <= 0:
        raise B3Error(f"memory size must be positive, got {text!r}")
    return int(value)


def device_capacity(device: torch.device) -> int:
    """The memory a budget on this device is measured against: the GPU's, else the host's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return physical_memory()


def check_budget(device: torch.device, budget_bytes: int | None) -> None:
    """A budget the device cannot hold is the user's mistake, not a search to run."""
    if budget_bytes is None:
        return
    capacity = device_capacity(device)
    if budget_bytes > capacity:
        where = "this GPU" if device.type == "cuda" else "this machine"
        raise B3Error(
            f"memory budget {budget_bytes / 2**30:.2f} GiB is more than {where} has "
            f"({capacity / 2**30:.2f} GiB)"
        )


class MemoryBudget:
    """Caps the memory a step may use, so that the OOM paths run (and are tested) on CPU too.

    CUDA: the caching allocator is capped with set_per_process_memory_fraction, so a step over
    budget raises torch.OutOfMemoryError. Elsewhere: a guard checks the measured peak after each
    step and raises MemoryBudgetExceeded, which b3 handles exactly like an OOM.
    """

    def __init__(self, device: torch.device, budget_bytes: int | None):
        self.device, self.budget_bytes = device, budget_bytes
        check_budget(device, budget_bytes)
        if device.type == "cuda":
            # The cap is process-wide: set it every time, so an earlier budget never lingers.
            total = torch.cuda.get_device_properties(device).total_memory
            fraction = min(1.0, budget_bytes / total) if budget_bytes else 1.0
            torch.cuda.set_per_process_memory_fraction(fraction, device)

    def check(self, peak: PeakMemory) -> None:
        if self.budget_bytes and self.device.type != "cuda" and peak.peak_bytes > self.budget_bytes:
            raise MemoryBudgetExceeded(
                f"peak memory {peak.peak_bytes / 2**20:.0f} MiB is over the budget of "
                f"{self.budget_bytes / 2**20:.0f} MiB"
            )
