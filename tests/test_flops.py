"""A step's FLOPs, counted by torch's FlopCounterMode outside the clock: equal to a hand count,
per optimizer update, and beside a sequence model's 6·N·tokens."""

import pytest
import torch

from b3core.measuring.runner import measure
from b3core.spec.step import StepSpec, Timing

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

QUICK = Timing(repeats=2, warmup=2, block_steps=1, telemetry=False)
B = 4
# simple_cnn at 32x32: Conv(3, 16, 3x3, padding 1) at every pixel, then Linear(16*16*16, 10)
CONV = 2 * B * 16 * 32 * 32 * (3 * 3 * 3)
LINEAR = 2 * B * (16 * 16 * 16) * 10


def test_the_counted_flops_of_simple_cnn_are_a_hand_count():
    infer = measure(StepSpec("simple_cnn", B, mode="inference", device="cpu"), QUICK)
    assert infer.flops_per_step == CONV + LINEAR
    # backward: each layer's weight gradient (as much as its forward), and the linear layer's
    # input gradient; the images need none, so the convolution's is not computed
    train = measure(StepSpec("simple_cnn", B, device="cpu"), QUICK)
    assert train.flops_per_step == 2 * CONV + 3 * LINEAR
    # per optimizer update: two micro-batches are twice the work
    accumulated = measure(StepSpec("simple_cnn", B, accumulation_steps=2, device="cpu"), QUICK)
    assert accumulated.flops_per_step == 2 * train.flops_per_step
    assert train.flops_per_s == train.flops_per_step * train.measurement.iterations_per_second
    assert measure(StepSpec("simple_cnn", B), QUICK.replace(flops=False)).flops_per_step is None


def test_a_language_model_shows_six_n_tokens_beside_the_count():
    result = measure(StepSpec("gpt_small", 2, seq_len=32, vocab_size=256, device="cpu"), QUICK)
    assert result.rule_of_thumb_flops == 6 * result.workload.parameters * 2 * 32
    assert result.flops_per_step > 0
    saved = result.to_dict()
    assert saved["flops_per_step"] == result.flops_per_step
    assert saved["rule_of_thumb_flops_per_step"] == result.rule_of_thumb_flops


def test_an_out_of_memory_while_counting_keeps_the_timed_result(monkeypatch):
    from b3core.measuring import runner

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "count_step_flops", out_of_memory)
    result = measure(StepSpec("simple_cnn", B, device="cpu"), QUICK)
    assert result.flops_per_step is None and len(result.measurement.times) == 2


# --- MFU: the achieved FLOP/s over the device's peak ---------------------------------------


@pytest.mark.parametrize(
    ("gpu", "precision", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 PCIe", "bf16", 756),
        ("NVIDIA H100 NVL", "tf32", 417.5),
        ("NVIDIA A100-SXM4-40GB", "fp32", 19.5),
        ("NVIDIA L40S", "fp16", 362.05),
        ("NVIDIA L4", "bf16", 121),
        ("NVIDIA H200 NVL", "bf16", 835.5),
        ("Tesla V100-SXM2-16GB", "fp32", 15.7),
        ("Tesla V100-PCIE-16GB", "fp16", 112),
        ("Tesla V100S-PCIE-32GB", "fp16", 130),
        ("NVIDIA L40", "bf16", None),  # neither an L40S nor an L4
        ("NVIDIA A10G", "bf16", None),  # AWS's A10G is not the A10 of the datasheet
        ("Tesla T4", "bf16", None),  # no bf16 on a T4: no peak, rather than fp16's
        ("NVIDIA GeForce GTX 1080", "fp32", None),
    ],
)
def test_a_gpu_peak_is_its_datasheet_figure_for_the_precision(monkeypatch, gpu, precision, tflops):
    from b3core.measuring import peaks

    monkeypatch.setattr(peaks, "device_name", lambda device: gpu)
    peak = peaks.device_peak(torch.device("cuda", 0), precision)
    if tflops is None:
        assert peak is None
        assert peaks.device_peak(torch.device("cuda", 0), precision, 100.0).flops_per_s == 1e14
    else:
        assert peak.flops_per_s == tflops * 1e12
        assert "datasheet" in peak.source and "https://" in peak.source


def test_the_cpu_peak_is_measured_once_per_dtype_and_thread_count(monkeypatch, tmp_path):
    from b3core.measuring import peaks

    monkeypatch.setenv("B3_CACHE_DIR", str(tmp_path))
    measured = []

    def fake_rate(device, dtype):
        measured.append(dtype)
        return 1e11 * (1 + len(measured)), 512

    monkeypatch.setattr(peaks, "measure_matmul_rate", fake_rate)
    first = peaks.device_peak(torch.device("cpu"), "fp32")
    assert first.flops_per_s == 2e11 and "measured" in first.source
    assert peaks.device_peak(torch.device("cpu"), "tf32") == first  # cached: fp32 matmuls too
    assert peaks.device_peak(torch.device("cpu"), "bf16").flops_per_s == 3e11
    assert measured == [torch.float32, torch.bfloat16]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert peaks.device_peak(torch.device("cpu"), "fp32").flops_per_s == 4e11
    finally:
        torch.set_num_threads(threads)


def test_the_matmul_rate_counts_two_n_cubed_flops_over_the_best_product(monkeypatch):
    from b3core.measuring import peaks

    times = iter([0.01, 0.01, 0.5, 0.4, 0.2, 0.3, 0.5])  # warm-up, sizing, then five tries
    monkeypatch.setattr(peaks, "MIN_MATMUL_SECONDS", 0.0)
    monkeypatch.setattr(peaks, "time_block", lambda fn, device: next(times))
    rate, size = peaks.measure_matmul_rate(torch.device("cpu"), torch.float32)
    assert size == 256 and rate == 2 * 256**3 / 0.2


def test_mfu_is_the_counted_rate_over_the_peak_with_the_throughputs_interval():
    from b3core.measuring.result import Peak, StepResult

    result = measure(StepSpec("simple_cnn", B, device="cpu"), QUICK.replace(peak_tflops=0.01))
    assert result.peak == Peak(1e10, "--peak-tflops")
    assert result.mfu.samples_per_s == pytest.approx(result.flops_per_s / 1e10)
    rate = result.measurement.throughput
    low, high = result.mfu.ci95
    assert low / result.mfu.samples_per_s == pytest.approx(rate.ci95[0] / rate.samples_per_s)
    assert high / result.mfu.samples_per_s == pytest.approx(rate.ci95[1] / rate.samples_per_s)
    saved = result.to_dict()
    assert saved["mfu"] == result.mfu.samples_per_s and saved["peak_flops_source"]
    assert StepResult.from_dict(saved).mfu == result.mfu
    assert measure(StepSpec("simple_cnn", B), QUICK.replace(flops=False)).mfu is None


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_a_grouped_convolutions_backward_counts_its_groups(groups):
    """torch 2.14's formula counts a grouped convolution's weight gradient as if ungrouped
    (groups times too many: a depthwise convolution's by its channel count); b3's count is the
    hand count, the forward's work three times (forward, input gradient, weight gradient)."""
    from b3core.measuring.flops import count_flops

    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=groups)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    forward = 2 * 2 * 32 * 8 * 8 * (32 // groups) * 3 * 3
    assert count_flops(lambda: conv(x).sum().backward(), torch.device("cpu")) == 3 * forward
