"""asv suite: training and inference steps over the cases of b3's profile (B3_PROFILE, default
quick), the very grid that the pytest suite runs. Narrow it with B3_MODELS, B3_BATCH_SIZES,
B3_PRECISIONS and B3_DEVICE, as for pytest."""

from b3core.errors import StepOutOfMemory
from b3core.measuring.clocks import synchronized
from b3core.measuring.memory import is_out_of_memory
from b3core.measuring.runner import MIN_WARMUP, build_step, measure, prepare_device
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


class _Step:
    params, param_names = PARAMS, PARAM_NAMES
    mode = "train"
    number = 1  # one step per sample: each timed sample is a whole optimizer update
    repeat = (10, 20, 120.0)
    warmup_time = 0.0  # setup already ran b3's warm-up steps
    timeout = 1800

    def setup(self, model, batch_size, precision):
        spec = _runnable(GRID.case(model, batch_size, precision, self.mode))
        self.device = prepare_device(spec)
        try:
            # each timed sample ends when the device's work does
            self.step = synchronized(build_step(spec, self.device), self.device)
            for _ in range(MIN_WARMUP):
                self.step()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise  # a real failure: asv reports it
            raise NotImplementedError(f"{spec.label} does not fit: {exc}") from None


class TrainStep(_Step):
    def time_train_step(self, model, batch_size, precision):
        self.step()


class Inference(_Step):
    mode = "inference"

    def time_inference(self, model, batch_size, precision):
        self.step()


class TrainThroughput:
    """Tracked numbers from b3's own measurement: median samples/s and peak device memory
    (CUDA's max allocated; on CPU, the process's RSS growth), one measurement per case."""

    params, param_names = PARAMS, PARAM_NAMES
    timeout = 1800

    def setup(self, model, batch_size, precision):
        spec = _runnable(GRID.case(model, batch_size, precision, "train"))
        try:
            self.result = measure(spec, repeats=10)
        except StepOutOfMemory as oom:
            raise NotImplementedError(str(oom)) from None

    def track_samples_per_second(self, model, batch_size, precision):
        return self.result.measurement.samples_per_second.median

    track_samples_per_second.unit = "samples/s"

    def track_peak_memory(self, model, batch_size, precision):
        return self.result.memory.peak_bytes

    track_peak_memory.unit = "bytes"
