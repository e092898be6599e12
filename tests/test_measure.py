import pytest

from b3core.errors import B3Error
from b3core.measuring.runner import StepSpec, measure


def test_spec_validates_its_input():
    with pytest.raises(B3Error, match="batch size"):
        StepSpec("simple_cnn", 0)
    with pytest.raises(B3Error, match="accumulation"):
        StepSpec("simple_cnn", 4, accumulation_steps=0)
    with pytest.raises(B3Error, match="unknown model"):
        StepSpec("no_such_model", 4)
    with pytest.raises(B3Error, match="precision"):
        StepSpec("simple_cnn", 4, precision="fp8")


def test_samples_per_step_counts_accumulated_micro_batches():
    assert StepSpec("simple_cnn", 8, accumulation_steps=4).samples_per_step == 32
    assert StepSpec("simple_cnn", 8, accumulation_steps=4, mode="inference").samples_per_step == 8


def test_measure_train_step_keeps_raw_times_and_memory():
    result = measure(StepSpec("simple_cnn", 16, device="cpu", accumulation_steps=2), repeats=4)
    assert len(result.measurement.times) == 4
    assert result.measurement.samples_per_step == 32
    assert result.memory.peak_bytes > 0
    assert result.first_call_s > 0
    assert result.to_dict()["label"] == "simple_cnn/train/bs16/fp32/acc2"


def test_measure_inference_and_bf16():
    result = measure(
        StepSpec("simple_cnn", 8, device="cpu", mode="inference", precision="bf16"), repeats=3
    )
    assert result.measurement.time.n == 3


def test_fp16_on_cpu_is_refused_clearly():
    with pytest.raises(B3Error, match="fp16 is not supported on cpu"):
        measure(StepSpec("simple_cnn", 8, device="cpu", precision="fp16"), repeats=2)


def test_warmup_below_two_is_refused():
    with pytest.raises(B3Error, match="warm-up"):
        measure(StepSpec("simple_cnn", 8, device="cpu"), warmup=1)


def test_compile_reports_its_first_call_apart():
    """torch.compile's compilation lands in the first (warm-up) call, never in the statistics."""
    result = measure(StepSpec("simple_cnn", 8, device="cpu", compile=True), repeats=3)
    assert result.spec.label.endswith("/compiled")
    assert result.first_call_s > 5 * result.measurement.time.median
