"""b3's asv benchmarks as classes to put in any asv suite: b3's own (benchmarks/asv_steps.py)
and a user's, for their own models.

    # benchmarks/asv_my_models.py in your project
    from b3core.suites.asv_suite import step_benchmarks

    TrainStep, Inference, TrainCost = step_benchmarks(models="my_project.nets:tiny_cnn")

Keep those three names: asv finds a benchmark by its class's name. The keyword arguments are
CaseOptions' (profile, models, batch_sizes, precisions, device, ...); what is not given comes
from the B3_* variables, then the profile (quick by default).

asv treats every number as lower-is-better, so every benchmark here tracks a cost: step time,
time per sample, peak memory. Never a rate: asv would gate a throughput backwards.
"""

from __future__ import annotations

import functools

from b3core.errors import StepOutOfMemory
from b3core.measuring.clocks import synced_every
from b3core.measuring.runner import measure, prepare
from b3core.spec.step import DEFAULT_REPEATS, StepSpec, Timing
from b3core.suites.cases import CaseGrid, CaseOptions, case_grid, unsupported_reason

PARAM_NAMES = ["model", "batch_size", "precision"]


def _runnable(spec: StepSpec) -> StepSpec:
    """asv skips a case whose setup raises NotImplementedError."""
    reason = unsupported_reason(spec)
    if reason:
        raise NotImplementedError(reason)
    return spec


@functools.cache
def _ready_step(spec: StepSpec):
    """Built and warmed once per process: asv re-runs setup before every sample, and a step
    rebuilt each time would be timed cold. Each timed call ends in a device sync."""
    try:
        ready = prepare(_runnable(spec))
    except StepOutOfMemory as oom:
        raise NotImplementedError(str(oom)) from None
    return synced_every(ready.call, ready.device)


class _Step:
    """asv's own timer, per-step clock. (asv re-runs setup between the calls of one sample when
    number > 1, so a blocked clock cannot live here: TrainCost tracks it.)"""

    grid: CaseGrid
    param_names = PARAM_NAMES
    mode = "train"
    number = 1
    repeat = (20, 50, 120.0)  # more samples: asv decides significance from them
    warmup_time = 0.0  # setup already ran b3's warm-up steps
    timeout = 1800

    def setup(self, model, batch_size, precision):
        self.step = _ready_step(self.grid.case_on_axis(model, batch_size, precision, self.mode))


class _TrainStep(_Step):
    def time_train_step(self, model, batch_size, precision):
        self.step()


class _Inference(_Step):
    mode = "inference"

    def time_inference(self, model, batch_size, precision):
        self.step()


class _TrainCost:
    """b3's own measurement, one per case, through the runner with the blocked clock: the
    time per training sample (the inverse of b3's total-samples-over-total-time throughput)
    peak memory (CUDA's max allocated; on CPU, the tensors' peak), whether telemetry found the
    run contended, energy per sample, and 1 - MFU. asv keeps one
    value per track_* (the last round's), so the measurement is twice b3's default length."""

    grid: CaseGrid
    param_names = PARAM_NAMES
    timeout = 1800

    def setup(self, model, batch_size, precision):
        spec = _runnable(self.grid.case_on_axis(model, batch_size, precision, "train"))
        try:
            self.result = measure(spec, Timing(repeats=2 * DEFAULT_REPEATS))
        except StepOutOfMemory as oom:
            raise NotImplementedError(str(oom)) from None

    def track_seconds_per_sample(self, model, batch_size, precision):
        return 1.0 / self.result.measurement.throughput.samples_per_s

    track_seconds_per_sample.unit = "seconds"

    def track_peak_memory(self, model, batch_size, precision):
        return self.result.memory.peak_bytes

    track_peak_memory.unit = "bytes"

    def track_contended(self, model, batch_size, precision):
        """1 when telemetry saw CPU steal, outside load or GPU throttling in the timed region:
        that commit's figures are suspect, not necessarily slower."""
        return float(self.result.contended)

    track_contended.unit = "contended"

    def track_joules_per_sample(self, model, batch_size, precision):
        """Energy per training sample where a counter exists (NVML, RAPL); n/a elsewhere."""
        return self.result.telemetry.energy_per_sample if self.result.telemetry else None

    track_joules_per_sample.unit = "joules"

    def track_mfu_shortfall(self, model, batch_size, precision):
        """1 - MFU: the share of the device's peak FLOP/s that the step leaves unused, so that
        lower is better as in every other asv figure; n/a where no peak is known."""
        mfu = self.result.mfu
        return 1.0 - mfu.samples_per_s if mfu else None

    track_mfu_shortfall.unit = "1 - MFU"


def step_benchmarks(**case_options) -> tuple[type, type, type]:
    """(TrainStep, Inference, TrainCost) over the cases that the options select, parametrized by
    model, batch size and precision: the same grid as the pytest suite's."""
    grid = case_grid(CaseOptions.from_env(**case_options))
    params = [grid.model_axis(), list(grid.batch_sizes), list(grid.precisions)]
    return tuple(
        type(base.__name__.removeprefix("_"), (base,), {"grid": grid, "params": params})
        for base in (_TrainStep, _Inference, _TrainCost)
    )
