import math

import pytest

from b3core.errors import B3Error
from b3core.studies.lr_rules import accumulation_for, scale_lr, warmup_lr, warmup_steps

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def test_linear_rule_scales_with_the_batch():
    assert scale_lr(0.1, 256, 8192, "linear") == pytest.approx(3.2)  # Goyal et al.'s setting
    assert scale_lr(5e-4, 128, 64, "linear") == pytest.approx(2.5e-4)


def test_sqrt_rule_scales_with_the_root():
    assert scale_lr(5e-4, 128, 512, "sqrt") == pytest.approx(1e-3)


def test_unknown_rule_and_bad_values_are_errors():
    with pytest.raises(B3Error, match="rule"):
        scale_lr(0.1, 128, 256, "cubic")
    with pytest.raises(B3Error):
        scale_lr(0.1, 0, 256)


def test_warmup_steps_cover_five_epochs_when_the_batch_grows():
    assert warmup_steps(1024, 256, 45_000) == math.ceil(5 * 45_000 / 1024)
    assert warmup_steps(128, 256, 45_000) == 0


def test_warmup_lr_ramps_linearly_to_the_peak():
    lrs = [warmup_lr(s, 4, 1.0) for s in range(6)]
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert warmup_lr(0, 0, 0.3) == 0.3


def test_accumulation_reaches_the_target_batch():
    assert accumulation_for(1024, 128) == (8, 1024)
    assert accumulation_for(1000, 128) == (8, 1024)  # rounds up; the effective batch is said
    assert accumulation_for(1024, 64, world_size=4) == (4, 1024)
