"""Device-correct clocks: every reading sees all the work queued before it, and nothing queued
before the bracket lands inside it.

Two clocks share one bracket. The per-step clock brackets each step, which gives the latency
distribution; on a GPU it also exposes kernel-launch latency that a real training loop hides
behind the previous step's work. The blocked clock brackets k steps, so the device stays busy
between them: the pipelined throughput that a training loop sees (torch.utils.benchmark times
blocks for the same reason).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from b3core.workloads.devices import synchronize

# A block at least this long makes the bracket's own cost (two syncs, two events: tens of
# microseconds) negligible against the steps inside it.
MIN_BLOCK_SECONDS = 0.05
MAX_BLOCK_STEPS = 1000


def time_block(fn: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Seconds that `calls` back-to-back calls of fn take on the device, queued work included.

    On CUDA, events bracket the calls on the target device's current stream, and the end event
    is waited for; elsewhere the device is synchronised before each read of the host's clock.
    """
    synchronize(device)  # nothing from before may run inside the bracket
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(calls):
            fn()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return time.perf_counter() - began


def block_steps_for(step_seconds: float) -> int:
    """Steps per block so that a block lasts at least MIN_BLOCK_SECONDS."""
    if not step_seconds > 0:
        return 1
    return max(1, min(MAX_BLOCK_STEPS, math.ceil(MIN_BLOCK_SECONDS / step_seconds)))


def synced_every(fn: Callable[[], object], device: torch.device, k: int = 1) -> Callable[[], None]:
    """fn, with a device sync after every k-th call: for outside timers (pytest-benchmark, asv)
    that read a host clock around k calls, so that each reading ends when the device's work
    does. k=1 is the per-step clock; k>1 the blocked clock."""
    calls = 0

    def call() -> None:
        nonlocal calls
        fn()
        calls += 1
        if calls % k == 0:
            synchronize(device)

    return call
