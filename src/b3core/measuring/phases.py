"""Where a training step's time goes: forward with the loss, backward, the optimizer step, and
under DDP the all-reduce wait.

A separate pass after the clock, never inside it: each phased step marks its phases as they
end (train_step's `mark`). On CUDA each mark records an event on the current stream, so the
phases are the device's time between events and the device is synced once per step; on CPU a
mark reads the host clock (CPU work is done when its call returns). The phases' medians should
add up to the plain step's median; the report says when they do not.
"""

from __future__ import annotations

import time

import torch

from b3core.measuring import distributed
from b3core.measuring.result import PhaseTimes
from b3core.workloads.build import Workload
from b3core.workloads.devices import synchronize

PHASES = ("forward", "backward", "optimizer")


def _marks(device: torch.device):
    """(mark, read): mark() stamps now on the device; read() gives the stamps' seconds from the
    first, after the device finished them."""
    if device.type == "cuda":
        events: list[torch.cuda.Event] = []

        def mark() -> None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            events.append(event)

        def read() -> list[float]:
            events[-1].synchronize()
            return [events[0].elapsed_time(e) / 1e3 for e in events]

        return mark, read
    stamps: list[float] = []

    def mark_host() -> None:
        synchronize(device)
        stamps.append(time.perf_counter())

    return mark_host, lambda: [t - stamps[0] for t in stamps]


def _phased_step(workload: Workload, device: torch.device) -> tuple[dict[str, float], float]:
    """One training step's seconds per phase, and its whole time."""
    mark, read = _marks(device)
    names: list[str] = []

    def end_of(phase: str) -> None:
        names.append(phase)
        mark()

    synchronize(device)
    mark()
    workload.marked_call(end_of)
    stamps = read()
    seconds = dict.fromkeys(PHASES, 0.0)
    for phase, began, ended in zip(names, stamps, stamps[1:]):
        seconds[phase] += ended - began
    return seconds, stamps[-1]


def time_phases(workload: Workload, device: torch.device, steps: int) -> PhaseTimes:
    """`steps` phased steps (under DDP `steps` pairs, one step of each pair without the
    all-reduce). Every rank must call this alike."""
    if workload.marked_call is None or workload.trainer.custom_step is not None:
        raise ValueError("phases are b3's own training step's")
    data_parallel = distributed.current() is not None and workload.trainer.no_sync is not None
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    step_times: list[float] = []
    if not data_parallel:
        for _ in range(steps):
            seconds, total = _phased_step(workload, device)
            for phase in PHASES:
                times[phase].append(seconds[phase])
            step_times.append(total)
        method = _method(device)
        return PhaseTimes({p: tuple(t) for p, t in times.items()}, tuple(step_times), method)
    all_reduce = []
    for _ in range(steps):
        torch.distributed.barrier()
        with workload.trainer.no_sync():
            local, _ = _phased_step(workload, device)
        torch.distributed.barrier()
        seconds, total = _phased_step(workload, device)
        all_reduce.append(seconds["backward"] - local["backward"])
        times["forward"].append(seconds["forward"])
        times["backward"].append(local["backward"])
        times["optimizer"].append(seconds["optimizer"])
        step_times.append(total)
    phases = {
        "forward": tuple(times["forward"]),
        "backward": tuple(times["backward"]),
        "all_reduce": tuple(all_reduce),
        "optimizer": tuple(times["optimizer"]),
    }
    method = _method(device) + "; all-reduce: backward with DDP's all-reduce less without it"
    return PhaseTimes(phases, tuple(step_times), method)


def _method(device: torch.device) -> str:
    if device.type == "cuda":
        return "CUDA events on the current stream at each phase's end, one sync per step"
    return "host clock at each phase's end, the device synced first"
