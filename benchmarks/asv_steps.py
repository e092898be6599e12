"""asv suite: training and inference steps over the cases of b3's profile (B3_PROFILE, default
quick), the very grid that the pytest suite runs. Narrow it with B3_MODELS, B3_BATCH_SIZES,
B3_PRECISIONS and B3_DEVICE, as for pytest.

asv treats every number as lower-is-better, so every benchmark here tracks a cost: step time,
time per sample, peak memory. Never a rate: asv would gate a throughput backwards.
"""

import functools

from b3core.errors import StepOutOfMemory
from b3core.measuring.clocks import synced_every
from b3core.measuring.runner import measure, prepare
from b3core.spec.step import DEFAULT_REPEATS, Timing
from b3core.suites.cases import CaseOptions, case_grid, unsupported_reason

GRID = case_grid(CaseOptions.from_env())
PARAMS = [list(GRID.models), list(GRID.batch_sizes), list(GRID.precisions)]
PARAM_NAMES = ["model", "batch_size", "precision"]


def _runnable(spec):
    """asv skips a case whose setup raises NotImplementedError."""
    reason = unsupported_reason(spec)
    if reason:
        raise NotImplementedError(reason)
    return spec


@functools.cache
def _ready_step(model, batch_size, precision, mode):
    """Built and warmed once per process: asv re-runs setup before every sample, and a step
    rebuilt each time would be timed cold. Each timed call ends in a device sync."""
    spec = _runnable(GRID.case(model, batch_size, precision, mode))
    try:
        ready = prepare(spec)
    except StepOutOfMemory as oom:
        raise NotImplementedError(str(oom)) from None
    return synced_every(ready.call, ready.device)


class _Step:
    """asv's own timer, per-step clock. (asv re-runs setup between the calls of one sample when
    number > 1, so a blocked clock cannot live here: TrainCost tracks it.)"""

    params, param_names = PARAMS, PARAM_NAMES
    mode = "train"
    number = 1
    repeat = (20, 50, 120.0)  # more samples: asv decides significance from them
    warmup_time = 0.0  # setup already ran b3's warm-up steps
    timeout = 1800

    def setup(self, model, batch_size, precision):
        self.step = _ready_step(model, batch_size, precision, self.mode)


class TrainStep(_Step):
    def time_train_step(self, model, batch_size, precision):
        self.step()


class Inference(_Step):
    mode = "inference"

    def time_inference(self, model, batch_size, precision):
        self.step()


class TrainCost:
    """b3's own measurement, one per case, through the runner with the blocked clock: the
    time per training sample (the inverse of b3's total-samples-over-total-time throughput)
    and peak memory (CUDA's max allocated; on CPU, the process's RSS growth). asv keeps one
    value per track_* (the last round's), so the measurement is twice b3's default length."""

    params, param_names = PARAMS, PARAM_NAMES
    timeout = 1800

    def setup(self, model, batch_size, precision):
        spec = _runnable(GRID.case(model, batch_size, precision, "train"))
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
