import time

import pytest
import torch

import b3core.measuring.clocks as timing
from b3core.measuring.clocks import time_call, time_repeats


def test_time_call_measures_the_work():
    elapsed = time_call(lambda: time.sleep(0.05), torch.device("cpu"))
    assert 0.045 <= elapsed < 0.5


def test_clock_is_read_only_after_synchronising(monkeypatch):
    events = []
    monkeypatch.setattr(timing, "synchronize", lambda device: events.append("sync"))
    real_clock = time.perf_counter
    monkeypatch.setattr(timing.time, "perf_counter", lambda: events.append("clock") or real_clock())
    time_call(lambda: events.append("work"), torch.device("mps"))
    assert events == ["sync", "clock", "work", "sync", "clock"]


def test_warmup_calls_are_not_in_the_timings():
    calls = []
    warm, timed = time_repeats(lambda: calls.append(1), torch.device("cpu"), repeats=5, warmup=3)
    assert len(calls) == 8 and len(warm) == 3 and len(timed) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_see_queued_work():
    a = torch.randn(4096, 4096, device="cuda")
    elapsed = time_call(lambda: [a @ a for _ in range(20)], torch.device("cuda"))
    assert elapsed > 1e-3
