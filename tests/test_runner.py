"""The runner times exactly the work a step names: hooks count forward, backward and optimizer
calls inside every clock bracket; GradScaler's skipped updates are warmed away, then counted."""

import functools

import pytest
import torch

from b3core.errors import B3Error
from b3core.measuring import runner
from b3core.measuring.runner import measure
from b3core.spec import StepSpec, Timing
from b3core.workloads import build

pytestmark = pytest.mark.untimed  # counts and records; a compiled first call is slow at any load

CPU = "cpu"


def test_spec_validates_its_own_fields_without_the_registry():
    with pytest.raises(B3Error, match="batch size"):
        StepSpec("simple_cnn", 0)
    with pytest.raises(B3Error, match="accumulation"):
        StepSpec("simple_cnn", 4, accumulation_steps=0)
    with pytest.raises(B3Error, match="precision"):
        StepSpec("simple_cnn", 4, precision="fp8")
    with pytest.raises(B3Error, match="warm-up"):
        Timing(warmup=1)
    with pytest.raises(B3Error, match="clock"):
        Timing(clock="sundial")
    StepSpec("no_such_model", 4)  # a saved result of a model this b3 no longer knows loads


def test_the_registry_is_consulted_when_the_step_is_built():
    with pytest.raises(B3Error, match="unknown model 'no_such_model'"):
        measure(StepSpec("no_such_model", 4, device=CPU))
    with pytest.raises(B3Error, match="multiple of 16"):
        measure(StepSpec("vit_b_16", 4, image_size=100, device=CPU))
    with pytest.raises(B3Error, match="fp16 is not supported on cpu"):
        measure(StepSpec("simple_cnn", 8, device=CPU, precision="fp16"))


def test_samples_per_step_counts_accumulated_micro_batches():
    assert StepSpec("simple_cnn", 8, accumulation_steps=4).samples_per_step == 32
    assert StepSpec("simple_cnn", 8, accumulation_steps=4, mode="inference").samples_per_step == 8


class Counts:
    def __init__(self):
        self.forward = self.backward = self.updates = 0

    def snapshot(self):
        return (self.forward, self.backward, self.updates)


@pytest.fixture
def counted(monkeypatch):
    """Hooks on every model and optimizer the runner builds, and a check in every bracket."""
    counts, brackets = Counts(), []
    real_prepare, real_time = build.prepare_training, runner.time_block

    def prepare_with_hooks(step, seed=0):
        trainer = real_prepare(step, seed)
        trainer.model.register_forward_hook(
            lambda *a: setattr(counts, "forward", counts.forward + 1)
        )
        trainer.model.register_full_backward_hook(
            lambda *a: setattr(counts, "backward", counts.backward + 1)
        )
        trainer.optimizer.register_step_post_hook(
            lambda *a: setattr(counts, "updates", counts.updates + 1)
        )
        return trainer

    def time_and_count(fn, device, calls=1):
        before = counts.snapshot()
        seconds = real_time(fn, device, calls)
        after = counts.snapshot()
        brackets.append((calls, tuple(a - b for a, b in zip(after, before))))
        return seconds

    monkeypatch.setattr(build, "prepare_training", prepare_with_hooks)
    monkeypatch.setattr(runner, "time_block", time_and_count)
    return brackets


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("clock", ["per-step", "blocked"])
@pytest.mark.parametrize("k", [1, 3])
def test_each_timed_training_step_is_k_forwards_k_backwards_and_one_update(counted, clock, k):
    timing = Timing(repeats=4, clock=clock, block_steps=None if clock == "per-step" else 2)
    result = measure(StepSpec("simple_cnn", 4, accumulation_steps=k, device=CPU), timing)
    warm, timed = counted[: result.warmup.steps], counted[result.warmup.steps :]
    assert len(timed) == 4
    for calls, (forward, backward, updates) in counted:
        assert (forward, backward, updates) == (calls * k, calls * k, calls)
    assert all(calls == 1 for calls, _ in warm)
    steps_per_bracket = 1 if clock == "per-step" else 2
    assert all(calls == steps_per_bracket for calls, _ in timed)
    assert result.measurement.steps == 4 * steps_per_bracket
    assert result.measurement.samples_per_step == 4 * k
    assert result.skipped_steps == 0 and result.warmup.settled


def test_each_timed_inference_step_is_one_forward_and_nothing_else(counted):
    result = measure(StepSpec("simple_cnn", 4, mode="inference", device=CPU), Timing(repeats=3))
    for calls, counts in counted:
        assert counts == (calls, 0, 0)
    assert len(counted) == result.warmup.steps + 3


class Poisoned(torch.nn.Module):
    """Wraps a model so that chosen training attempts produce inf: GradScaler then skips them."""

    def __init__(self, inner, trainer_ref, attempts):
        super().__init__()
        self.inner, self.trainer_ref, self.attempts = inner, trainer_ref, set(attempts)

    def forward(self, x):
        y = self.inner(x)
        if self.trainer_ref[0].attempted_updates in self.attempts:
            y = y * float("inf")
        return y


@pytest.fixture
def scaled_and_poisoned(monkeypatch):
    """fp16's GradScaler path, on CPU: a real GradScaler, and overflows on chosen attempts."""
    chosen = []
    real_prepare = build.prepare_training

    def prepare(step, seed=0):
        trainer = real_prepare(step, seed)
        ref = [trainer]
        trainer.model = Poisoned(trainer.model, ref, chosen)
        trainer.scaler = torch.amp.GradScaler("cpu")
        return trainer

    monkeypatch.setattr(build, "prepare_training", prepare)
    return chosen


def test_warm_up_goes_on_until_the_loss_scale_has_settled(scaled_and_poisoned):
    scaled_and_poisoned.extend([1, 2, 3, 4, 5])  # the first five updates overflow
    result = measure(StepSpec("simple_cnn", 4, device=CPU), Timing(repeats=3, clock="per-step"))
    assert result.warmup.skipped_updates == 5
    # five skipped, two applied in a row, and the steps after the CPU memory profiler stopped
    assert result.warmup.steps == 7 + runner.STEPS_AFTER_PROFILER
    assert result.warmup.settled
    assert result.skipped_steps == 0
    assert not [w for w in result.warnings if "skipped" in w or "settled" in w]


def test_skipped_updates_inside_the_clock_are_counted_and_warned_about(scaled_and_poisoned):
    # attempts 1-2 warm up, then the steps after the CPU memory profiler's end; then 8 timed
    first_timed = 3 + runner.STEPS_AFTER_PROFILER
    scaled_and_poisoned.extend([first_timed, first_timed + 3])
    result = measure(StepSpec("simple_cnn", 4, device=CPU), Timing(repeats=8, clock="per-step"))
    assert result.warmup.steps == 2 + runner.STEPS_AFTER_PROFILER
    assert result.skipped_steps == 2
    assert any("2 of 8 timed steps skipped" in w for w in result.warnings)
    assert result.to_dict()["skipped_steps"] == 2


def test_a_step_that_never_settles_is_reported(scaled_and_poisoned, monkeypatch):
    monkeypatch.setattr(runner, "MAX_WARMUP_STEPS", 6)
    scaled_and_poisoned.extend(range(1, 100))
    result = measure(StepSpec("simple_cnn", 4, device=CPU), Timing(repeats=2, clock="per-step"))
    assert result.warmup.steps == 6 + runner.STEPS_AFTER_PROFILER and not result.warmup.settled
    assert any("not settled" in w for w in result.warnings)
    assert result.skipped_steps == 2


def test_blocks_are_sized_from_a_step_after_the_profilers_slow_one(monkeypatch):
    """On CPU the first step after the memory profiler stops runs several times slow; the
    blocked clock's length comes from a step after it."""
    stopped = []
    real_warmed = runner.PeakMemoryTracker.warmed

    def warmed(self):
        stopped.append(True)
        return real_warmed(self)

    after_stop: list[bool] = []

    def time_block(call, device, calls=1):
        call()
        if stopped:
            after_stop.append(True)
        return 0.5 if len(after_stop) == 1 else 0.001

    monkeypatch.setattr(runner.PeakMemoryTracker, "warmed", warmed)
    monkeypatch.setattr(runner, "time_block", time_block)
    ready = runner.run_guarded(StepSpec("simple_cnn", 2, device=CPU), lambda ready: ready).value
    assert stopped and ready.last_warmup_step_s == 0.001


def test_compile_reports_its_first_call_apart(monkeypatch):
    """torch.compile's compilation lands in the first (warm-up) call, never in the statistics.
    (The aot_eager backend traces as inductor does but generates no C++: 3 s, not 18.)"""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    result = measure(StepSpec("simple_cnn", 8, device=CPU, compile=True), Timing(repeats=3))
    assert result.spec.label.endswith("/compiled")
    assert result.first_call_s > 5 * result.measurement.time.median


def test_result_records_what_was_built_and_round_trips():
    from b3core.measuring.result import StepResult

    result = measure(StepSpec("tanh_cnn", 2, image_size=32, device=CPU), Timing(repeats=2))
    assert result.workload.parameters > 0 and result.workload.batch_dependent_layers
    assert result.workload.input_shape == (3, 32, 32)
    again = StepResult.from_dict(result.to_dict())
    assert again.measurement == result.measurement and again.workload == result.workload


def test_the_public_api_is_importable_from_the_top():
    import b3core

    for name in b3core.__all__:  # each name is the object it names, from the module that owns it
        assert name == "__version__" or getattr(b3core, name).__name__ == name
    result = b3core.measure(b3core.StepSpec("simple_cnn", 2, device=CPU), b3core.Timing(repeats=2))
    assert isinstance(result, b3core.StepResult)
    assert "simple_cnn" in b3core.list_models()


def test_a_spec_is_resolved_once_per_measurement(monkeypatch):
    """The device, the model and its input are resolved once, into the step that the build
    takes: the model's name is looked up once, and so is the device."""
    from b3core.workloads import build, models

    looked_up, devices = [], []
    real_lookup, real_device = models.get_model_spec, build.resolve_device
    monkeypatch.setattr(models, "get_model_spec", lambda n: looked_up.append(n) or real_lookup(n))
    monkeypatch.setattr(build, "resolve_device", lambda n: devices.append(n) or real_device(n))
    measure(StepSpec("simple_cnn", 4, device=CPU), Timing(repeats=2))
    assert looked_up == ["simple_cnn"] and len(devices) == 1
