"""The machine's state while a step is timed, sampled in a background thread.

GPU (NVML, through the optional `nvidia-ml-py` package): SM and memory clocks, temperature,
power, utilisation, throttle reasons, and energy from the total-energy counter (else power
integrated over the samples). CPU: the hypervisor's steal time and the load of other processes
(from /proc/stat and each of our processes' /proc/PID/stat), the load average, the frequency
where the OS exposes it, and RAPL energy where /sys/class/powercap does.

The thread sleeps between samples and each sample is a few file reads or NVML calls (ctypes,
which releases the GIL), so the timed thread is not disturbed; benchmarks/test_overhead.py
compares steps with telemetry on and off. A source that is missing is reported "unavailable"
with the reason, never guessed.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from b3core.measuring.telemetry_summary import (
    CpuShares,
    Energy,
    GpuState,
    SignalRange,
    TelemetrySummary,
)

SAMPLE_INTERVAL_S = 0.05
# Beyond these, a measurement is marked contended: the hypervisor took more than this share of
# the CPU time, or other processes kept this many cores busy, during the timed region.
STEAL_LIMIT = 0.05
OUTSIDE_LOAD_LIMIT_CORES = 0.25
# NVML's clocks-event reasons that slow the GPU down for heat or power (not idling, not a
# user's clock setting): the "throttled" of --discard-throttled.
THROTTLE_REASONS = {
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}
USER_CLOCKS_REASON = 0x2  # application clocks or locked clocks set by the user

_PROC = Path("/proc")
_RAPL = Path("/sys/class/powercap")
_CPU_FREQ = Path("/sys/devices/system/cpu")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Unavailable(Exception):
    """A telemetry source that this machine does not offer; the message says why."""


# ---------------------------------------------------------------- NVML, behind one boundary


def load_nvml():
    """pynvml, initialised; Unavailable when the package or the driver is missing. Tests
    replace this function with a fake NVML."""
    try:
        import pynvml
    except ImportError:
        raise Unavailable(
            "the nvidia-ml-py package is not installed (pip install b3core[nvml])"
        ) from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError's subclasses vary by driver
        raise Unavailable(f"NVML did not start: {exc}") from None
    return pynvml


def nvml_handle(device: torch.device):
    """(pynvml, handle) for a CUDA device. NVML counts GPUs in PCI order, CUDA by default
    fastest-first, so the handle is looked up by the device's PCI bus id."""
    nvml = load_nvml()
    try:
        bus_id = torch.cuda.get_device_properties(device).pci_bus_id
    except Exception:  # noqa: BLE001 - older torch has no pci_bus_id; no CUDA here
        bus_id = None
    try:
        if bus_id:
            return nvml, nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        return nvml, nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"NVML has no handle for {device}: {exc}") from None


def _optional(call, *args):
    try:
        return call(*args)
    except Exception:  # noqa: BLE001 - "not supported" on this GPU or driver
        return None


def gpu_state(device: torch.device) -> dict:
    """What the machine record keeps of a GPU's settings: power limit, application clocks
    (and their defaults), persistence mode, and whether clocks are locked by the user."""
    try:
        nvml, handle = nvml_handle(device)
    except Unavailable as why:
        return {"nvml": f"unavailable: {why}"}
    sm, mem = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
    limit = _optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    state = {
        "power_limit_w": limit / 1000 if limit is not None else None,
        "application_clocks_mhz": {
            "sm": _optional(nvml.nvmlDeviceGetApplicationsClock, handle, sm),
            "memory": _optional(nvml.nvmlDeviceGetApplicationsClock, handle, mem),
        },
        "default_application_clocks_mhz": {
            "sm": _optional(nvml.nvmlDeviceGetDefaultApplicationsClock, handle, sm),
            "memory": _optional(nvml.nvmlDeviceGetDefaultApplicationsClock, handle, mem),
        },
        "max_clocks_mhz": {
            "sm": _optional(nvml.nvmlDeviceGetMaxClockInfo, handle, sm),
            "memory": _optional(nvml.nvmlDeviceGetMaxClockInfo, handle, mem),
        },
        "persistence_mode": bool(_optional(nvml.nvmlDeviceGetPersistenceMode, handle)),
    }
    reasons = _optional(nvml.nvmlDeviceGetCurrentClocksEventReasons, handle) or 0
    state["clocks_locked"] = bool(reasons & USER_CLOCKS_REASON) or (
        state["application_clocks_mhz"] != state["default_application_clocks_mhz"]
    )
    return state


class _NvmlSource:
    prefix = "gpu"

    def __init__(self, device: torch.device):
        self.nvml, self.handle = nvml_handle(device)
        self.energy_start_mj = _optional(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)
        self.locked = gpu_state(device).get("clocks_locked")

    def sample(self) -> dict:
        nvml, h = self.nvml, self.handle
        util = _optional(nvml.nvmlDeviceGetUtilizationRates, h)
        power = _optional(nvml.nvmlDeviceGetPowerUsage, h)
        return {
            "sm_clock_mhz": _optional(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
            "memory_clock_mhz": _optional(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM),
            "temperature_c": _optional(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
            "power_w": power / 1000 if power is not None else None,
            "utilization_pct": util.gpu if util is not None else None,
            "event_reasons": _optional(nvml.nvmlDeviceGetCurrentClocksEventReasons, h) or 0,
        }

    def energy(self, samples: list[tuple[float, dict]]) -> dict:
        end = _optional(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)
        if self.energy_start_mj is not None and end is not None:
            return {"joules": (end - self.energy_start_mj) / 1000, "method": "energy counter"}
        return _integrated_power(samples)


def _integrated_power(samples: list[tuple[float, dict]]) -> dict:
    points = [(t, s["power_w"]) for t, s in samples if s.get("power_w") is not None]
    if len(points) < 2:
        return {"unavailable": "no energy counter, and too few power samples to integrate"}
    joules = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:]))
    return {"joules": joules, "method": "power integrated over the samples"}


# ---------------------------------------------------------------- CPU, from /proc and /sys


def _cpu_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine, from /proc/stat's first line."""
    fields = [int(x) for x in (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def _process_jiffies(pids: Iterable[int]) -> int:
    """utime + stime of these processes (all their threads), in jiffies."""
    total = 0
    for pid in pids:
        try:
            stat = (_PROC / str(pid) / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
        total += int(fields[11]) + int(fields[12])
    return total


def _cpu_frequency_mhz() -> float:
    freqs = [
        int(p.read_text()) / 1000
        for p in _CPU_FREQ.glob("cpu[0-9]*/cpufreq/scaling_cur_freq")
        if p.is_file()
    ]
    if not freqs:
        cpuinfo = _PROC / "cpuinfo"
        text = cpuinfo.read_text() if cpuinfo.exists() else ""
        freqs = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)]
    if not freqs:
        raise Unavailable("neither cpufreq nor /proc/cpuinfo gives a frequency here")
    return statistics.fmean(freqs)


def _rapl_domains() -> list[Path]:
    """The package-level RAPL domains (intel-rapl:N, not their subdomains)."""
    return sorted(p for p in _RAPL.glob("intel-rapl:*") if p.name.count(":") == 1)


def _rapl_energy_uj() -> dict[Path, tuple[int, int]]:
    domains = _rapl_domains()
    if not domains:
        raise Unavailable(f"no RAPL domains under {_RAPL} (common on VMs)")
    readings = {}
    for domain in domains:
        try:
            energy = int((domain / "energy_uj").read_text())
            wrap = int((domain / "max_energy_range_uj").read_text())
        except PermissionError:
            raise Unavailable(f"{domain}/energy_uj is readable by root only") from None
        except (OSError, ValueError) as exc:
            raise Unavailable(f"cannot read {domain}: {exc}") from None
        readings[domain] = (energy, wrap)
    return readings


class _CpuSource:
    prefix = "cpu"

    def __init__(self, pids: Iterable[int]):
        if not (_PROC / "stat").exists():
            raise Unavailable("no /proc/stat on this system")
        self.pids = tuple(pids)
        self.unavailable: dict[str, str] = {}
        self.first = self.last = (time.perf_counter(), *_cpu_times(), _process_jiffies(self.pids))
        try:
            self.rapl_start = _rapl_energy_uj()
        except Unavailable as why:
            self.rapl_start, self.unavailable["cpu_energy"] = None, str(why)
        try:
            _cpu_frequency_mhz()
        except Unavailable as why:
            self.unavailable["cpu_frequency"] = str(why)

    def sample(self) -> dict:
        now = (time.perf_counter(), *_cpu_times(), _process_jiffies(self.pids))
        interval = _cpu_shares(self.last, now)
        self.last = now
        load1 = float((_PROC / "loadavg").read_text().split()[0])
        sample = {**interval, "load_average_1min": load1}
        if "cpu_frequency" not in self.unavailable:
            sample["frequency_mhz"] = _cpu_frequency_mhz()
        return sample

    def whole_run(self) -> dict:
        return _cpu_shares(self.first, self.last)

    def energy(self, samples) -> dict:
        if self.rapl_start is None:
            return {"unavailable": self.unavailable["cpu_energy"]}
        joules = 0.0
        for domain, (end, wrap) in _rapl_energy_uj().items():
            start = self.rapl_start[domain][0]
            joules += ((end - start) % wrap) / 1e6
        return {"joules": joules, "method": "RAPL package counters (every process on the CPU)"}


def _cpu_shares(before: tuple, after: tuple) -> dict:
    (t0, busy0, steal0, total0, own0), (t1, busy1, steal1, total1, own1) = before, after
    seconds = max(t1 - t0, 1e-9)
    total = total1 - total0
    outside = (busy1 - busy0) - (own1 - own0)  # jiffies other processes ran
    return {
        "steal_share": (steal1 - steal0) / total if total > 0 else 0.0,
        "outside_load_cores": max(0.0, outside / _CLK_TCK / seconds),
    }


# ---------------------------------------------------------------- the sampler


class TelemetrySampler:
    """Samples every source every `interval_s` in a daemon thread while the `with` block runs.

    `pids`: the processes whose CPU time is the measurement's own (under DDP, every rank's),
    so that only other processes count as outside load.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        pids: Iterable[int] | None = None,
        interval_s: float = SAMPLE_INTERVAL_S,
    ):
        self.device, self.interval_s = device, interval_s
        self.pids = tuple(pids) if pids else (os.getpid(),)
        self.samples: dict[str, list[tuple[float, dict]]] = {}
        self.sources: list = []
        self.unavailable: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.began = self.ended = 0.0

    def __enter__(self) -> TelemetrySampler:
        try:
            self.sources.append(_CpuSource(self.pids))
        except Unavailable as why:
            self.unavailable["cpu"] = str(why)
        if self.device.type == "cuda":
            try:
                self.sources.append(_NvmlSource(self.device))
            except Unavailable as why:
                self.unavailable["gpu"] = str(why)
        else:
            self.unavailable["gpu"] = f"the measurement ran on {self.device.type}"
        for source in self.sources:
            self.unavailable.update(getattr(source, "unavailable", {}))
            self.samples[source.prefix] = []
        self.began = time.perf_counter()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="b3-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.ended = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        for source in self.sources:
            self.samples[source.prefix].append((time.perf_counter(), source.sample()))

    def throttled_during(self, start: float, end: float) -> bool:
        """Whether the GPU reported a thermal or power throttle reason in [start, end] (or in
        the last sample before start, whose state held into the span)."""
        gpu = self.samples.get("gpu", [])
        before = [s for t, s in gpu if t < start][-1:]
        inside = [s for t, s in gpu if start <= t <= end]
        return any(_throttle_names(s["event_reasons"]) for s in before + inside)

    def summary(
        self, samples_processed: int, discarded_blocks: int | None = None
    ) -> TelemetrySummary:
        """The record a result keeps (measuring/telemetry_summary.py)."""
        signals: dict[str, SignalRange] = {}
        for prefix, rows in self.samples.items():
            keys = sorted({k for _, s in rows for k in s if k != "event_reasons"})
            # the first CPU sample covers no interval: its shares are 0 by construction
            rows = rows[1:] if prefix == "cpu" and len(rows) > 1 else rows
            for key in keys:
                values = [s[key] for _, s in rows if s.get(key) is not None]
                if values:
                    signals[f"{prefix}.{key}"] = SignalRange(
                        min(values), statistics.median(values), max(values)
                    )
        energy: dict[str, Energy] = {}
        for source in self.sources:
            measured = Energy.from_dict(source.energy(self.samples[source.prefix]))
            if measured.joules is not None and samples_processed:
                measured = replace(measured, j_per_sample=measured.joules / samples_processed)
            energy[source.prefix] = measured
        for prefix in ("cpu", "gpu"):
            if prefix in self.unavailable and prefix not in energy:
                energy[prefix] = Energy(unavailable=self.unavailable[prefix])
        warnings, contention = [], []
        cpu_shares = gpu_state_record = None
        cpu = next((s for s in self.sources if s.prefix == "cpu"), None)
        if cpu is not None:
            cpu_shares = CpuShares(**cpu.whole_run())
            if cpu_shares.steal_share > STEAL_LIMIT:
                contention.append(f"the hypervisor stole {cpu_shares.steal_share:.0%} of CPU time")
            if cpu_shares.outside_load_cores > OUTSIDE_LOAD_LIMIT_CORES:
                contention.append(
                    f"other processes kept {cpu_shares.outside_load_cores:.1f} CPU cores busy"
                )
        gpu = next((s for s in self.sources if s.prefix == "gpu"), None)
        if gpu is not None:
            named = [_throttle_names(s["event_reasons"]) for _, s in self.samples["gpu"]]
            reasons = tuple(sorted({name for names in named for name in names}))
            throttled = sum(bool(names) for names in named)
            gpu_state_record = GpuState(gpu.locked, throttled, reasons)
            if reasons:
                contention.append(
                    f"the GPU throttled ({', '.join(reasons)}) in {throttled} of "
                    f"{len(self.samples['gpu'])} samples"
                )
            if not gpu.locked:
                warnings.append(
                    "GPU clocks are not locked (nvidia-smi -lgc / -ac): the clock boosts and "
                    "drops with heat and power, so runs vary more"
                )
        return TelemetrySummary(
            self.interval_s,
            self.ended - self.began,
            {prefix: len(rows) for prefix, rows in self.samples.items()},
            signals,
            energy,
            dict(self.unavailable),
            tuple(warnings),
            tuple(contention),
            cpu_shares,
            gpu_state_record,
            discarded_blocks,
        )


def _throttle_names(reasons: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if reasons & bit]


def require_throttle_readings(device: torch.device) -> None:
    """--discard-throttled's precondition: NVML readings of this GPU (one line, else)."""
    from b3core.errors import B3Error

    if device.type != "cuda":
        raise B3Error(f"--discard-throttled needs a CUDA GPU with NVML; this runs on {device.type}")
    try:
        nvml_handle(device)
    except Unavailable as why:
        raise B3Error(f"--discard-throttled needs NVML: {why}") from None
