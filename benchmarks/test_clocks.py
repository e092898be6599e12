"""The blocked and the per-step clock, interleaved on one warmed step.

On a CPU nothing runs asynchronously, so the two must agree: each pair is k steps timed one by
one against a block of k steps, in shuffled order, and the ratio of their mean step times gets a
bootstrap interval, which fails the benchmark on a CPU when it lies wholly outside
1 ± CPU_AGREEMENT. On a GPU the blocked clock comes out faster for
small steps, by the kernel-launch latency that a per-step sync exposes and a training loop
hides; the same benchmark, run there, measures by how much.
"""

import os
import random

import pytest

from b3core.measuring import clocks
from b3core.measuring.runner import prepare
from b3core.measuring.stats import paired_ratio
from b3core.spec import StepSpec

PAIRS = 40
CPU_AGREEMENT = 0.03
CASES = [
    StepSpec("simple_cnn", 32),
    StepSpec("mobilenet_v3_small", 16, image_size=64),
]


@pytest.mark.parametrize("base", CASES, ids=[c.label for c in CASES])
def test_blocked_and_per_step_clocks_agree(benchmark, b3_note, base):
    spec = base.replace(device=os.environ.get("B3_DEVICE", "auto"))
    ready = prepare(spec)
    k = clocks.block_steps_for(ready.last_warmup_step_s)
    per_step, blocked = [], []
    order = random.Random(0)
    for _ in range(PAIRS):
        pair = ["per-step", "blocked"]
        order.shuffle(pair)
        for clock in pair:
            if clock == "per-step":
                per_step.append(sum(clocks.time_block(ready.call, ready.device) for _ in range(k)))
            else:
                blocked.append(clocks.time_block(ready.call, ready.device, k))
    ratio, low, high = paired_ratio(blocked, per_step)
    benchmark.extra_info.update(
        block_steps=k,
        pairs=PAIRS,
        blocked_over_per_step=ratio,
        blocked_over_per_step_ci95=[low, high],
    )
    b3_note(
        f"clocks ({spec.label} on {ready.device}, {PAIRS} interleaved pairs of {k} steps): "
        f"blocked/per-step step time = {ratio:.4f}, 95% CI {low:.4f} to {high:.4f}"
    )
    benchmark.pedantic(clocks.synced_every(ready.call, ready.device, k), rounds=10, iterations=k)
    if ready.device.type == "cpu":
        assert low <= 1 + CPU_AGREEMENT and high >= 1 - CPU_AGREEMENT, (
            f"the clocks disagree on a CPU: blocked/per-step {ratio:.4f} ({low:.4f} to {high:.4f})"
        )
