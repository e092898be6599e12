"""A step's floating-point operations, counted by torch's own FlopCounterMode (never estimated),
once per configuration and outside every clock."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.utils.checkpoint import set_checkpoint_early_stop
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


def count_step_flops(
    call: Callable[[], object],
    model: nn.Module,
    forward: Callable[[], object],
    device: torch.device,
) -> tuple[int, int]:
    """(the FLOPs of one more call as it runs, of them those that activation checkpointing
    recomputed). Recomputation stops once the saved tensors that the backward pass needs are
    back (torch's early stop), so it is less than the checkpointed modules' forward pass; it is
    found from one more call with the early stop off, which recomputes exactly that forward
    pass: the model's own FLOPs are that call's less the forward's."""
    counted = count_flops(call, device)
    region = _checkpointed_forward_flops(model, forward)
    if not region:
        return counted, 0
    with set_checkpoint_early_stop(False):
        model_flops = count_flops(call, device) - region
    return counted, counted - model_flops


def _checkpointed_forward_flops(model: nn.Module, forward: Callable[[], object]) -> int:
    """The forward FLOPs of the checkpointed modules, counted in one forward pass without
    gradients (so that no activations are kept for it)."""
    wrappers = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
    if not wrappers:
        return 0
    recomputed, entered = 0, []
    with FlopCounterMode(display=False) as counter:

        def before(module, args):
            entered.append(counter.get_total_flops())

        def after(module, args, output):
            nonlocal recomputed
            recomputed += counter.get_total_flops() - entered.pop()

        handles = [w.register_forward_pre_hook(before) for w in wrappers]
        handles += [w.register_forward_hook(after) for w in wrappers]
        try:
            with torch.no_grad():
                forward()
        finally:
            for handle in handles:
                handle.remove()
    return recomputed
