"""The clocks see exactly the device work launched inside their bracket.

A GPU runs work asynchronously: a launch returns at once and the work finishes later, in order,
on a stream. `QueuedDevice` imitates that on the CPU with a one-worker queue, so that these tests
fail on a clock that forgets either sync, as a real GPU would make it lie.
"""

import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest
import torch

from b3core.measuring import clocks
from b3core.measuring.clocks import block_steps_for, synced_every, time_block

HOST_CLOCK_DEVICE = torch.device("mps")  # any non-CUDA device takes the host-clock path


class QueuedDevice:
    """Launches return at once; the work runs later, one item after another; sync waits."""

    def __init__(self):
        self.stream = ThreadPoolExecutor(max_workers=1)
        self.pending = []
        self.syncs = 0

    def launch(self, seconds: float) -> None:
        self.pending.append(self.stream.submit(time.sleep, seconds))

    def synchronize(self, device=None) -> None:
        self.syncs += 1
        wait(self.pending)
        self.pending.clear()


@pytest.fixture
def queued(monkeypatch):
    device = QueuedDevice()
    monkeypatch.setattr(clocks, "synchronize", device.synchronize)
    yield device
    device.stream.shutdown(wait=True)


@pytest.mark.parametrize("calls", [1, 4])
def test_the_clock_waits_for_work_queued_inside_its_bracket(queued, calls):
    """Without the sync after the calls, the reading would be the launches' time: about 0."""
    elapsed = time_block(lambda: queued.launch(0.03), HOST_CLOCK_DEVICE, calls)
    assert elapsed >= 0.03 * calls * 0.95


def test_a_block_times_every_one_of_its_calls():
    """Host-side work (no queue to hide behind): a block of 5 calls of 10 ms takes at least
    50 ms. A clock started before the last call only would read about 10 ms."""
    assert time_block(lambda: time.sleep(0.01), torch.device("cpu"), 5) >= 0.05


def test_work_queued_before_the_bracket_stays_out_of_it(queued):
    """Without the sync before the bracket, the earlier 300 ms would land inside it."""
    queued.launch(0.3)
    elapsed = time_block(lambda: queued.launch(0.01), HOST_CLOCK_DEVICE)
    assert 0.009 < elapsed < 0.15


def test_outside_timers_get_a_sync_after_every_kth_call(queued):
    call = synced_every(lambda: queued.launch(0.0), HOST_CLOCK_DEVICE, 3)
    syncs = []
    for _ in range(6):
        call()
        syncs.append(queued.syncs)
    assert syncs == [0, 0, 1, 1, 1, 2]  # the 3rd and 6th calls end their blocks


def test_block_length_reaches_the_minimum_block_time():
    assert block_steps_for(0.01) == 5
    assert block_steps_for(0.2) == 1
    assert block_steps_for(0.0) == 1
    assert block_steps_for(1e-9) == clocks.MAX_BLOCK_STEPS


class FakeEvent:
    def __init__(self, enable_timing):
        self.stream = "not recorded"

    def record(self, stream=None):
        self.stream = stream

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return 5.0  # ms


def test_cuda_events_are_recorded_on_the_target_devices_stream(monkeypatch):
    """With --device cuda:1 the events must bracket GPU 1's stream, not the current device's."""
    events = []

    def make_event(enable_timing):
        events.append(FakeEvent(enable_timing))
        return events[-1]

    monkeypatch.setattr(torch.cuda, "Event", make_event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"stream of {device}")
    monkeypatch.setattr(clocks, "synchronize", lambda device: None)
    elapsed = time_block(lambda: None, torch.device("cuda:1"), 3)
    assert elapsed == pytest.approx(0.005)
    assert [e.stream for e in events] == ["stream of cuda:1", "stream of cuda:1"]


def test_the_runner_makes_the_target_device_current_around_build_warmup_and_timing(monkeypatch):
    from b3core.measuring import runner
    from b3core.spec import StepSpec, Timing

    log = []

    class Current:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            log.append(("enter", str(self.device)))

        def __exit__(self, *exc):
            log.append(("exit", str(self.device)))

    real_build, real_time = runner.build_workload, runner.time_block
    monkeypatch.setattr(runner, "device_context", Current)
    monkeypatch.setattr(
        runner, "build_workload", lambda *a, **k: log.append(("build",)) or real_build(*a, **k)
    )
    monkeypatch.setattr(
        runner, "time_block", lambda *a, **k: log.append(("time",)) or real_time(*a, **k)
    )
    runner.measure(StepSpec("simple_cnn", 4, device="cpu"), Timing(repeats=2, clock="per-step"))
    assert log[0] == ("enter", "cpu") and log[-1] == ("exit", "cpu")
    # warm-up, the steps after the CPU memory profiler stopped, timed
    assert ("build",) in log[1:-1]
    assert log.count(("time",)) == 2 + runner.STEPS_AFTER_PROFILER + 2
