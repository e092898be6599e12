"""`b3 sweep`: time a configuration over many batch sizes.

Work is split into units (mode, batch size, pass, and a sequence model's length with
--seq-lens). Every pass visits all sizes in a fresh
shuffled order, so drift (clock boost, heat, other load) spreads over all sizes instead of biasing
one. Each finished unit is appended to a JSON-lines log and flushed at once, so an interrupted
sweep loses nothing already measured, and `--resume` runs only the units still missing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from b3core.errors import B3Error, StepOutOfMemory
from b3core.measuring.isolation import measure_maybe_isolated
from b3core.measuring.result import StepResult
from b3core.measuring.stats import Measurement
from b3core.measuring.telemetry_summary import TelemetrySummary
from b3core.spec import formats
from b3core.spec.step import StepSpec, Timing
from b3core.studies import log_file
from b3core.studies.memory_model import MemoryFit, fit_memory

LOG_NAME = "sweep.jsonl"


@dataclass(frozen=True)
class Unit:
    mode: str
    batch_size: int
    pass_index: int
    seq_len: int | None = None  # a sequence model's length (None: the model's own)

    @property
    def key(self) -> tuple[str, int, int, int | None]:
        return (self.mode, self.batch_size, self.pass_index, self.seq_len)

    @property
    def configuration(self) -> tuple[str, int, int | None]:
        """What the unit times, whatever the pass."""
        return (self.mode, self.batch_size, self.seq_len)


def configuration_of(record: dict) -> tuple[str, int, int | None]:
    """A logged unit's configuration: mode, batch size and length (None before b3 0.5)."""
    return (record["mode"], int(record["batch_size"]), record.get("seq_len"))


@dataclass(frozen=True)
class SweepPlan:
    base: StepSpec
    batch_sizes: tuple[int, ...]
    timing: Timing = Timing()  # its repeats are spread over the passes
    passes: int = 5
    inference: bool = False
    isolate: bool = False
    memory_budget: int | None = None
    seed: int = 0
    seq_lens: tuple[int, ...] = ()  # a sequence model's lengths, interleaved with the sizes

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise B3Error("a sweep needs at least one batch size")
        if min(self.batch_sizes) < 1:
            raise B3Error(f"batch sizes must be positive, got {min(self.batch_sizes)}")
        if self.passes < 1 or self.timing.repeats < self.passes:
            raise B3Error(
                f"need passes >= 1 and repeats >= passes, got {self.timing.repeats} repeats "
                f"in {self.passes} passes"
            )

    @property
    def modes(self) -> tuple[str, ...]:
        return ("train", "inference") if self.inference else ("train",)

    def units(self) -> list[Unit]:
        order = []
        lengths = self.seq_lens or (None,)
        for p in range(self.passes):
            units = [
                Unit(m, b, p, length)
                for m in self.modes
                for b in self.batch_sizes
                for length in lengths
            ]
            random.Random(self.seed * 7919 + p).shuffle(units)
            order += units
        return order

    def timing_in_pass(self, pass_index: int, mode: str = "train") -> Timing:
        base, extra = divmod(self.timing.repeats, self.passes)
        repeats = base + (1 if pass_index < extra else 0)
        # a size's FLOPs and phases are the same in every pass: found in the first only
        first = pass_index == 0
        return self.timing.replace(
            repeats=repeats,
            flops=self.timing.flops and first,
            phases=self.timing.phases and first and mode == "train",
        )

    def spec_for(self, unit: Unit) -> StepSpec:
        spec = self.base.replace(batch_size=unit.batch_size).for_mode(unit.mode)
        return spec.replace(seq_len=unit.seq_len) if unit.seq_len else spec

    def identity(self) -> dict:
        """What must match for `--resume` to continue this sweep rather than another."""
        base = self.base.to_dict()
        base.pop("batch_size")
        identity = {
            "base": base,
            "batch_sizes": list(self.batch_sizes),
            "timing": self.timing.to_dict(),
            "passes": self.passes,
            "inference": self.inference,
            "seed": self.seed,
        }
        return identity | ({"seq_lens": list(self.seq_lens)} if self.seq_lens else {})


class SweepLog:
    """The append-only record of a sweep: a header line, then one line per finished unit."""

    def __init__(self, path: Path, records: dict[tuple, dict], writer: bool = True):
        self.path, self.records, self.writer = path, records, writer

    @classmethod
    def follow(cls, out_dir: str | Path) -> SweepLog:
        """The log that another process (data-parallel rank 0) writes: read what it holds, and
        keep later units in memory only."""
        _, records = read_log(Path(out_dir) / LOG_NAME)
        return cls(Path(out_dir) / LOG_NAME, records, writer=False)

    @classmethod
    def open(cls, out_dir: str | Path, plan: SweepPlan, *, resume: bool, machine: dict) -> SweepLog:
        path = Path(out_dir) / LOG_NAME
        if path.exists():
            if not resume:
                raise B3Error(
                    f"{path} already holds a sweep: pass --resume to continue it, "
                    f"or choose another --out"
                )
            header, records = read_log(path)
            measured_on = header.get("machine", {}).get("slug")
            if measured_on != machine.get("slug"):
                raise B3Error(
                    f"{path} was measured on {measured_on}, this is {machine.get('slug')}: "
                    f"results from two machines must not mix; choose another --out"
                )
            if _with_current_defaults(header["plan"]) != plan.identity():
                raise B3Error(
                    f"{path} was written for a different sweep; resume with the same "
                    f"options, or choose another --out"
                )
            return cls(path, records)
        log_file.create(path, "sweep-log", {"plan": plan.identity(), "machine": machine})
        return cls(path, {})

    def append(self, unit: Unit, record: dict) -> None:
        record = {
            "mode": unit.mode,
            "batch_size": unit.batch_size,
            "pass": unit.pass_index,
            **({"seq_len": unit.seq_len} if unit.seq_len else {}),
            **record,
        }
        if self.writer:
            log_file.append(self.path, record)
        self.records[unit.key] = record


def _with_current_defaults(identity: dict) -> dict:
    """A logged plan with fields added to StepSpec or Timing since then at their defaults."""
    base = StepSpec.from_dict({**identity["base"], "batch_size": 1}).to_dict()
    base.pop("batch_size")
    return {**identity, "base": base, "timing": Timing.from_dict(identity["timing"]).to_dict()}


@formats.upgrade("sweep-log", 0)
def _from_b3_0_3(header: dict) -> dict:
    """b3 0.2 to 0.3 marked the header "b3_sweep": 2, b3 0.1 "b3_sweep": 1."""
    if header.get("b3_sweep") == 1:
        raise B3Error(
            "written by b3 0.1, whose results lack the clock, the warm-up and the workload: run "
            "the sweep again into a new --out"
        )
    if header.get("b3_sweep") != 2:
        raise ValueError("not a b3 sweep log header")
    return {k: v for k, v in header.items() if k != "b3_sweep"}


def read_log(path: str | Path) -> tuple[dict, dict[tuple, dict]]:
    """(header, records by unit key). A last line cut off by a kill mid-write is dropped; any
    other damage is a one-line B3Error."""
    lines = log_file.read_lines(path, "sweep")
    try:
        header = formats.upgraded("sweep-log", json.loads(lines[0]), f"sweep log {path}")
        if "plan" not in header:
            raise ValueError("not a b3 sweep log header")
        records = {}
        for number, line in enumerate(lines[1:], start=2):
            record = json.loads(line)
            key = (
                record["mode"],
                int(record["batch_size"]),
                int(record["pass"]),
                record.get("seq_len"),
            )
            if "result" in record:
                StepResult.from_dict(record["result"])  # validates the record
            elif "oom" not in record:
                raise ValueError(f"line {number} has neither a result nor an oom")
            records[key] = record
    except (IndexError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise B3Error(f"sweep log {path} is corrupt: {exc}") from None
    return header, records


@dataclass
class SweepResult:
    """Per (mode, batch size): all passes' times merged, or why the size did not run."""

    results: list[StepResult] = field(default_factory=list)
    failures: dict[tuple[str, int], str] = field(default_factory=dict)
    pass_rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    def for_mode(self, mode: str) -> list[StepResult]:
        return sorted(
            (r for r in self.results if r.spec.mode == mode), key=lambda r: r.spec.batch_size
        )

    def rates(self, mode: str = "train") -> dict[int, list[float]]:
        """Samples/s of each pass (its samples over its time), per size: the replicates for the
        alignment tests. Steps
        within one pass share that moment's machine state, so they are not independent; the
        passes, each in its own shuffled order, are."""
        return {size: rates for (m, size), rates in sorted(self.pass_rates.items()) if m == mode}

    def memory_fit(self, mode: str = "train") -> MemoryFit | None:
        runs = self.for_mode(mode)
        if len(runs) < 2:
            return None
        return fit_memory([r.spec.batch_size for r in runs], [r.memory.peak_bytes for r in runs])


def merge_measurements(parts: list[Measurement]) -> Measurement:
    """All passes' timed samples as one measurement (run_sweep gives every pass of a size the
    same block length, so that the ratio estimator stays exact)."""
    first = parts[0]
    if any(p.steps_per_sample != first.steps_per_sample or p.clock != first.clock for p in parts):
        raise ValueError("passes of one batch size were timed with different blocks")
    times = tuple(t for p in parts for t in p.times)
    return Measurement(times, first.samples_per_step, first.steps_per_sample, first.clock)


def aggregate_by_length(records: Iterable[dict]) -> dict[int | None, SweepResult]:
    """A sweep over lengths as one SweepResult per length (None: the model's own length)."""
    by_length: dict[int | None, list[dict]] = {}
    for record in records:
        by_length.setdefault(record.get("seq_len"), []).append(record)
    return {length: aggregate(group) for length, group in sorted(by_length.items(), key=_length)}


def _length(item) -> int:
    return item[0] or 0


def aggregate(records: Iterable[dict]) -> SweepResult:
    """The records of one length: every pass of each (mode, batch size) merged."""
    records = list(records)
    if len({r.get("seq_len") for r in records}) > 1:
        raise B3Error(
            "this sweep spans several sequence lengths (--seq-lens); b3 advise takes a sweep at "
            "one length: sweep that length into its own --out"
        )
    by_size: dict[tuple[str, int], list[dict]] = {}
    for record in records:
        by_size.setdefault((record["mode"], record["batch_size"]), []).append(record)
    result = SweepResult()
    for key, group in sorted(by_size.items()):
        group.sort(key=lambda r: r["pass"])
        measured = [StepResult.from_dict(r["result"]) for r in group if "result" in r]
        ooms = [r["oom"] for r in group if "oom" in r]
        if not measured:
            result.failures[key] = ooms[0]
            continue
        first = measured[0]
        result.pass_rates[key] = [r.measurement.throughput.samples_per_s for r in measured]
        peak = max((r.memory for r in measured), key=lambda m: m.peak_bytes)
        counted = next((r for r in measured if r.flops_per_step), None)  # the first pass's
        result.results.append(
            StepResult(
                first.spec,
                merge_measurements([r.measurement for r in measured]),
                peak,
                first.device_name,
                first.warmup,
                first.workload,
                sum(r.skipped_steps for r in measured),
                telemetry=TelemetrySummary.merged([r.telemetry for r in measured]),
                flops_per_step=counted.flops_per_step if counted else None,
                peak=counted.peak if counted else None,
                recomputed_flops_per_step=counted.recomputed_flops_per_step if counted else 0,
                phases=next((r.phases for r in measured if r.phases), None),
            )
        )
    return result


def run_sweep(
    plan: SweepPlan,
    log: SweepLog,
    *,
    on_unit: Callable[[Unit, dict | None], None] | None = None,
) -> SweepResult | dict[int, SweepResult]:
    """Run every unit the log does not hold yet. A size that ran out of memory is recorded once
    and not retried in later passes (on_unit sees None for those); the sweep goes on. Under
    data parallel an out-of-memory ends this rank instead (the other ranks would wait for it
    at their next collective): the run stops with what was logged, and --resume goes on.
    Returns the merged result: one per length (a dict) for a sweep over several lengths."""
    data_parallel = torch.distributed.is_available() and torch.distributed.is_initialized()
    failed = {configuration_of(r) for r in log.records.values() if "oom" in r}
    # The first pass of a size sizes its blocks; later passes reuse that length.
    block_steps = {
        configuration_of(r): r["result"]["measurement"].get("steps_per_sample", 1)
        for r in log.records.values()
        if "result" in r
    }
    for unit in plan.units():
        if unit.key in log.records:
            continue
        if unit.configuration in failed:
            if on_unit:
                on_unit(unit, None)
            continue
        try:
            timing = plan.timing_in_pass(unit.pass_index, unit.mode)
            if timing.clock == "blocked" and unit.configuration in block_steps:
                timing = timing.replace(block_steps=block_steps[unit.configuration])
            result = measure_maybe_isolated(
                plan.spec_for(unit),
                timing,
                isolate=plan.isolate,
                memory_budget=plan.memory_budget,
                seed=plan.seed,
            )
            record = {"result": result.to_dict()}
            block_steps[unit.configuration] = result.measurement.steps_per_sample
        except StepOutOfMemory as oom:
            if data_parallel:
                raise
            failed.add(unit.configuration)
            record = {"oom": oom.reason}
        log.append(unit, record)
        if on_unit:
            on_unit(unit, record)
    if plan.seq_lens:
        return aggregate_by_length(log.records.values())
    return aggregate(log.records.values())
