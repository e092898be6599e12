"""What a result keeps of the machine's state in its timed region (measuring/telemetry.py
samples it): typed records with the JSON shape saved results have always had. Torch-free, so
that saved results and reports read it anywhere."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SignalRange:
    """One sampled signal over the timed region."""

    min: float
    median: float
    max: float

    def to_dict(self) -> dict:
        return {"min": self.min, "median": self.median, "max": self.max}

    @classmethod
    def merged(cls, parts: list[SignalRange]) -> SignalRange:
        """Over several passes: min of minima, the median of medians, max of maxima."""
        return cls(
            min(p.min for p in parts),
            statistics.median(p.median for p in parts),
            max(p.max for p in parts),
        )


@dataclass(frozen=True)
class Energy:
    """One source's energy in the timed region, or why it is unavailable."""

    joules: float | None = None
    j_per_sample: float | None = None
    method: str | None = None
    unavailable: str | None = None

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> Energy:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class CpuShares:
    """Over the whole timed region: the hypervisor's share of CPU time, and the cores that
    processes other than the measurement's own kept busy."""

    steal_share: float
    outside_load_cores: float

    def to_dict(self) -> dict:
        return {"steal_share": self.steal_share, "outside_load_cores": self.outside_load_cores}


@dataclass(frozen=True)
class GpuState:
    clocks_locked: bool
    throttled_samples: int
    throttle_reasons: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "clocks_locked": self.clocks_locked,
            "throttled_samples": self.throttled_samples,
            "throttle_reasons": list(self.throttle_reasons),
        }


@dataclass(frozen=True)
class TelemetrySummary:
    """Min/median/max of every signal, energy per source, the contention verdict's reasons,
    and what was unavailable and why; `passes` > 1 when merged over a sweep's passes."""

    interval_s: float
    seconds: float
    samples: dict[str, int]  # samples taken per source
    signals: dict[str, SignalRange]  # "gpu.power_w": its range
    energy: dict[str, Energy]
    unavailable: dict[str, str]
    warnings: tuple[str, ...] = ()
    contention: tuple[str, ...] = ()  # why the region was contended; empty: it was not
    cpu: CpuShares | None = None
    gpu: GpuState | None = None
    discarded_throttled_blocks: int | None = None  # set under --discard-throttled
    passes: int = 1

    @property
    def contended(self) -> bool:
        return bool(self.contention)

    @property
    def energy_per_sample(self) -> float | None:
        """The GPU's J/sample where measured, else the CPU package's."""
        for source in ("gpu", "cpu"):
            energy = self.energy.get(source)
            if energy is not None and energy.j_per_sample is not None:
                return energy.j_per_sample
        return None

    def to_dict(self) -> dict:
        record = {
            "interval_s": self.interval_s,
            "seconds": self.seconds,
            "samples": dict(self.samples),
            "signals": {k: v.to_dict() for k, v in self.signals.items()},
            "energy": {k: v.to_dict() for k, v in self.energy.items()},
            "unavailable": dict(self.unavailable),
            "warnings": list(self.warnings),
            "contention": list(self.contention),
            "contended": self.contended,
        }
        if self.passes > 1:
            record["passes"] = self.passes
        if self.cpu is not None:
            record["cpu"] = self.cpu.to_dict()
        if self.gpu is not None:
            record["gpu"] = self.gpu.to_dict()
        if self.discarded_throttled_blocks is not None:
            record["discarded_throttled_blocks"] = self.discarded_throttled_blocks
        return record

    @classmethod
    def from_dict(cls, d: dict) -> TelemetrySummary:
        gpu = d.get("gpu")
        return cls(
            d["interval_s"],
            d["seconds"],
            dict(d.get("samples", {})),
            {k: SignalRange(**v) for k, v in d.get("signals", {}).items()},
            {k: Energy.from_dict(v) for k, v in d.get("energy", {}).items()},
            dict(d.get("unavailable", {})),
            tuple(d.get("warnings", ())),
            tuple(d.get("contention", ())),
            CpuShares(**d["cpu"]) if d.get("cpu") else None,
            GpuState(gpu["clocks_locked"], gpu["throttled_samples"], tuple(gpu["throttle_reasons"]))
            if gpu
            else None,
            d.get("discarded_throttled_blocks"),
            int(d.get("passes", 1)),
        )

    @classmethod
    def merged(cls, summaries: list[TelemetrySummary | None]) -> TelemetrySummary | None:
        """One summary for a configuration timed in several passes (a sweep's): sums of time,
        samples and energy, the signals' ranges merged, time-weighted CPU shares, and
        contended if any pass was."""
        parts = [s for s in summaries if s is not None]
        if len(parts) <= 1:
            return parts[0] if parts else None
        seconds = [s.seconds for s in parts]
        samples: dict[str, int] = {}
        for s in parts:
            for source, n in s.samples.items():
                samples[source] = samples.get(source, 0) + n
        cpu = None
        if all(s.cpu for s in parts):
            cpu = CpuShares(
                *(
                    sum(getattr(s.cpu, f.name) * t for s, t in zip(parts, seconds)) / sum(seconds)
                    for f in fields(CpuShares)
                )
            )
        gpu = None
        if all(s.gpu for s in parts):
            gpu = GpuState(
                parts[0].gpu.clocks_locked,
                sum(s.gpu.throttled_samples for s in parts),
                tuple(sorted({r for s in parts for r in s.gpu.throttle_reasons})),
            )
        discarded = [s.discarded_throttled_blocks for s in parts]
        return cls(
            parts[0].interval_s,
            sum(seconds),
            samples,
            {
                key: SignalRange.merged([s.signals[key] for s in parts if key in s.signals])
                for key in dict.fromkeys(k for s in parts for k in s.signals)
            },
            {
                source: _merged_energy([s.energy.get(source, Energy()) for s in parts])
                for source in dict.fromkeys(k for s in parts for k in s.energy)
            },
            {k: v for s in parts for k, v in s.unavailable.items()},
            tuple(dict.fromkeys(w for s in parts for w in s.warnings)),
            tuple(dict.fromkeys(c for s in parts for c in s.contention)),
            cpu,
            gpu,
            None if all(d is None for d in discarded) else sum(d or 0 for d in discarded),
            sum(s.passes for s in parts),
        )


def _merged_energy(parts: list[Energy]) -> Energy:
    """Summed joules and samples where every pass measured them; else why one did not."""
    if all(p.j_per_sample for p in parts):
        joules = sum(p.joules for p in parts)
        samples = sum(p.joules / p.j_per_sample for p in parts)
        return Energy(joules, joules / samples if samples else None, parts[0].method)
    return next((p for p in parts if p.unavailable), parts[0])
