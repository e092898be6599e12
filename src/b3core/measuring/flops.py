"""A step's floating-point operations, counted by torch's own FlopCounterMode (never estimated),
once per configuration and outside every clock."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(call: Callable[[], object], device: torch.device) -> int:
    """The FLOPs of one more call of a built step (a training update with its backward, or an
    inference pass): FlopCounterMode counts the matrix products, convolutions and attention
    that the step dispatches; elementwise work, normalisation and the optimizer's update are
    not counted. The call runs untimed, after the timed blocks."""
    with FlopCounterMode(display=False) as counter:
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return counter.get_total_flops()
