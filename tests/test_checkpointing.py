"""Activation checkpointing as a spec field: the blocks of every built-in model and of a user's
model, torch's checkpoint wrappers, the same gradients, less memory, and the recomputed FLOPs
counted apart from the model's."""

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from b3core.errors import B3Error
from b3core.measuring.runner import measure
from b3core.spec.step import StepSpec, Timing
from b3core.workloads.checkpointing import apply_checkpointing, checkpoint_blocks
from b3core.workloads.models import get_model_spec, list_models

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

QUICK = Timing(repeats=2, warmup=2, block_steps=1, telemetry=False)
EXPECTED_BLOCKS = {
    "resnet18": ("BasicBlock", 8),
    "resnet50": ("Bottleneck", 16),
    "mobilenet_v3_small": ("InvertedResidual", 11),
    "mobilenet_v3_large": ("InvertedResidual", 15),
    "vit_tiny": ("EncoderBlock", 4),
    "vit_b_16": ("EncoderBlock", 12),
    "gpt_small": ("Block", 4),
    "gpt_medium": ("Block", 6),
    "bert_small": ("Block", 4),
    "small_bn_cnn": ("Sequential", 2),
    "tanh_cnn": ("Sequential", 4),
    "simple_cnn": ("Sequential", 1),  # its hook names its one block
}


def build(name: str) -> nn.Module:
    model = get_model_spec(name)
    return model.build(model.resolve_input())


def test_blocks_are_defined_for_every_built_in_model():
    assert set(EXPECTED_BLOCKS) == set(list_models())
    for name, (kind, count) in EXPECTED_BLOCKS.items():
        blocks = checkpoint_blocks(build(name))
        assert [type(b).__name__ for b in blocks] == [kind] * count, name


def test_blocks_are_wrapped_by_torchs_checkpoint_wrapper_and_all_wraps_the_model():
    model = apply_checkpointing(build("resnet18"), "blocks", "resnet18")
    wrapped = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
    assert len(wrapped) == 8
    assert all(type(w._checkpoint_wrapped_module).__name__ == "BasicBlock" for w in wrapped)
    assert isinstance(apply_checkpointing(build("resnet18"), "all", "resnet18"), CheckpointWrapper)
    plain = build("resnet18")
    assert apply_checkpointing(plain, "none", "resnet18") is plain


class Hooked(nn.Module):
    """A user's model that names its own blocks."""

    def __init__(self, hook_as_function: bool):
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)
        if hook_as_function:
            self.b3_checkpoint_blocks = lambda: [self.second]
        else:
            self.b3_checkpoint_blocks = (self.first,)

    def forward(self, x):
        return self.head(self.second(self.first(x)))


@pytest.mark.parametrize("as_function", [True, False])
def test_a_users_model_names_its_blocks_with_an_attribute_or_a_function(as_function):
    model = Hooked(as_function)
    expected = model.second if as_function else model.first
    assert checkpoint_blocks(model) == [expected]


def test_a_model_without_blocks_or_with_a_bad_hook_is_one_line():
    flat = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(B3Error, match="no repeated blocks.*--activation-checkpointing all"):
        apply_checkpointing(flat, "blocks", "flat")
    flat.b3_checkpoint_blocks = ["not a module"]
    with pytest.raises(B3Error, match="must name modules"):
        checkpoint_blocks(flat)
    flat.b3_checkpoint_blocks = 7
    with pytest.raises(B3Error, match="must name modules"):
        checkpoint_blocks(flat)
    flat.b3_checkpoint_blocks = flat[0]  # one module (callable, but not a hook to call)
    assert checkpoint_blocks(flat) == [flat[0]]
    with pytest.raises(B3Error, match="drop --inference"):
        StepSpec("resnet18", 4, mode="inference", activation_checkpointing="blocks")
    assert StepSpec("resnet18", 4, activation_checkpointing="blocks").label.endswith("ckpt-blocks")
    inference = StepSpec("resnet18", 4, accumulation_steps=2, activation_checkpointing="all")
    assert inference.for_mode("inference").activation_checkpointing == "none"


def test_checkpointed_training_computes_the_same_gradients():
    torch.manual_seed(0)
    inputs, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    grads = {}
    for policy in ("none", "blocks", "all"):
        torch.manual_seed(1)
        model = apply_checkpointing(build("small_bn_cnn"), policy, "small_bn_cnn").train()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        grads[policy] = [p.grad for p in model.parameters()]
    for policy in ("blocks", "all"):
        for plain, checkpointed in zip(grads["none"], grads[policy]):
            torch.testing.assert_close(checkpointed, plain)


@pytest.fixture(scope="module")
def checkpointed_peaks():
    """small_bn_cnn's activations dwarf its weights: checkpointing's saving shows."""
    spec = StepSpec("small_bn_cnn", 64, device="cpu")
    return {
        policy: measure(spec.replace(activation_checkpointing=policy), QUICK)
        for policy in ("none", "blocks")
    }


def test_checkpointing_blocks_lowers_the_measured_peak(checkpointed_peaks):
    none, blocks = checkpointed_peaks["none"], checkpointed_peaks["blocks"]
    assert blocks.memory.peak_bytes < 0.9 * none.memory.peak_bytes


def test_the_recomputed_flops_are_the_blocks_forward_and_mfu_leaves_them_out():
    b = 4
    conv = 2 * b * 16 * 32 * 32 * (3 * 3 * 3)  # simple_cnn's block: its convolution
    linear = 2 * b * (16 * 16 * 16) * 10
    timing = QUICK.replace(peak_tflops=1.0)
    # recomputation stops once the tensors that backward needs are back (torch's early stop):
    # the linear head's input is simple_cnn's block's output, so "all" recomputes the block too
    for policy, recomputed in (("blocks", conv), ("all", conv)):
        spec = StepSpec("simple_cnn", b, activation_checkpointing=policy, device="cpu")
        result = measure(spec, timing)
        assert result.recomputed_flops_per_step == recomputed
        assert result.flops_per_step == 2 * conv + 3 * linear + recomputed
        assert result.model_flops_per_step == 2 * conv + 3 * linear
        assert result.mfu.samples_per_s < result.hfu.samples_per_s
        assert result.mfu.samples_per_s == pytest.approx(
            result.model_flops_per_step * result.measurement.iterations_per_second / 1e12
        )
    plain = measure(StepSpec("simple_cnn", b, device="cpu"), timing)
    assert plain.recomputed_flops_per_step == 0 and plain.hfu is None
    # each micro-batch recomputes its own forward: the model's FLOPs stay the plain step's
    spec = StepSpec("simple_cnn", b, accumulation_steps=2, activation_checkpointing="all")
    accumulated = measure(spec.replace(device="cpu"), timing)
    assert accumulated.model_flops_per_step == 2 * (2 * conv + 3 * linear)
    assert accumulated.recomputed_flops_per_step == 2 * conv
