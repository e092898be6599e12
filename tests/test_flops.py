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

    def out_of_memory(call, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "count_flops", out_of_memory)
    result = measure(StepSpec("simple_cnn", B, device="cpu"), QUICK)
    assert result.flops_per_step is None and len(result.measurement.times) == 2
