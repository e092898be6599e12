"""--phases: where a training step's time goes, in a separate pass after the clock."""

import pytest
import torch
from torch import nn

from b3core.errors import B3Error
from b3core.measuring import phases as phases_module
from b3core.measuring.result import PhaseTimes
from b3core.measuring.runner import measure
from b3core.reports.tables import describe_step_result
from b3core.spec.step import StepSpec, Timing
from b3core.workloads.training import train_step

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

QUICK = Timing(repeats=3, warmup=2, block_steps=1, telemetry=False, flops=False)


def test_a_training_step_marks_each_phase_as_it_ends():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(3, 4), torch.tensor([0, 1, 0]))
    marks = []
    train_step(model, optimizer, [batch, batch], mark=marks.append)
    assert marks == ["forward", "backward", "forward", "backward", "optimizer"]


class FakeWorkload:
    """Two micro-batches of 1 s forward and 2 s backward, then a 0.5 s optimizer step, on a
    fake host clock."""

    def __init__(self, clock):
        self.clock, self.trainer = clock, type("Trainer", (), {"custom_step": None})()

    def marked_call(self, mark):
        for phase, seconds in [("forward", 1), ("backward", 2)] * 2 + [("optimizer", 0.5)]:
            self.clock.now += seconds
            mark(phase)


def test_phases_add_each_micro_batchs_time_and_keep_the_whole_step(monkeypatch):
    clock = type("Clock", (), {"now": 100.0})()
    monkeypatch.setattr(phases_module.time, "perf_counter", lambda: clock.now)
    timed = phases_module.time_phases(FakeWorkload(clock), torch.device("cpu"), steps=2)
    assert timed.times == {"forward": (2, 2), "backward": (4, 4), "optimizer": (0.5, 0.5)}
    assert timed.step_times == (6.5, 6.5) and timed.total == 6.5
    assert timed.share("backward") == pytest.approx(4 / 6.5)
    assert PhaseTimes.from_dict(timed.to_dict()) == timed


@pytest.fixture(scope="module")
def phased():
    return measure(StepSpec("small_bn_cnn", 16, accumulation_steps=2, device="cpu"),
                   QUICK.replace(phases=True))  # fmt: skip


def test_b3_step_phases_prints_each_phase_and_whether_they_add_up(phased):
    assert set(phased.phases.times) == {"forward", "backward", "optimizer"}
    assert all(len(t) == 3 and min(t) > 0 for t in phased.phases.times.values())
    text = describe_step_result(phased)
    for name in ("forward + loss", "backward", "optimizer step", "added up"):
        assert name in text
    gap, noise = phased.phase_gap
    assert gap == pytest.approx(phased.phases.total / phased.measurement.time.median - 1)
    assert ("NOT within the noise" in text) == (abs(gap) > noise)
    assert measure(StepSpec("small_bn_cnn", 16, device="cpu"), QUICK).phases is None


def test_phases_apart_from_a_training_step_are_refused():
    with pytest.raises(B3Error, match="inference step is one forward pass"):
        measure(StepSpec("simple_cnn", 4, mode="inference"), QUICK.replace(phases=True))
    with pytest.raises(B3Error, match="b3's own training step"):
        spec = StepSpec("simple_cnn", 4, train_step="tests.own_steps:plain_step")
        measure(spec, QUICK.replace(phases=True))
