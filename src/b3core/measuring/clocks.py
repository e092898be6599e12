"""Device-correct clocks: every reading sees all the work queued before it."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from b3core.workloads.devices import synchronize


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that one call of fn takes on the device, queued work included.

    On CUDA, events bracket the call on the stream and the end event is waited for; elsewhere the
    device is synchronised before each read of the host's monotonic clock.
    """
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)  # nothing from before may run inside the bracket
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    synchronize(device)
    began = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - began


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """fn, then a device sync: for outside timers (pytest-benchmark, asv) that read a host clock,
    so that each timed call ends when the device's work does."""

    def call() -> None:
        fn()
        synchronize(device)

    return call


def time_repeats(
    fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Run `warmup` untimed calls, then time `repeats` calls; returns (warmup_times, times).

    Warm-up calls are timed too, but only so that a first call's compile or autotune cost can be
    reported apart; they never enter the statistics.
    """
    warmup_times = [time_call(fn, device) for _ in range(warmup)]
    times = [time_call(fn, device) for _ in range(repeats)]
    return warmup_times, times
