"""A step's floating-point operations, counted by torch's own FlopCounterMode (never estimated),
once per configuration and outside every clock."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.utils.checkpoint import set_checkpoint_early_stop
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop


def _grouped_conv_backward_flop(
    grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
    output_padding, groups, output_mask, out_shape, **kwargs,
) -> int:  # fmt: skip
    """torch's convolution-backward formula with the weight gradient of a grouped convolution
    divided by its groups: torch 2.14 counts it as if ungrouped, so a depthwise convolution's
    weight gradient comes out `groups` times too large (pytorch/pytorch#183405)."""
    args = (grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
            output_padding, groups)  # fmt: skip
    grad_input = conv_backward_flop(*args, [output_mask[0], False, False], out_val=out_shape)
    grad_weight = conv_backward_flop(*args, [False, output_mask[1], False], out_val=out_shape)
    return grad_input + grad_weight // groups


CORRECTED_FORMULAS = {torch.ops.aten.convolution_backward: _grouped_conv_backward_flop}


def count_flops(call: Callable[[], object], device: torch.device) -> int:
    """The FLOPs of one more call of a built step (a training update with its backward, or an
    inference pass): FlopCounterMode counts the matrix products, convolutions and attention
    that the step dispatches; elementwise work, normalisation and the optimizer's update are
    not counted. The call runs untimed, after the timed blocks."""
    with FlopCounterMode(display=False, custom_mapping=CORRECTED_FORMULAS) as counter:
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return counter.get_total_flops()


def count_step_flops(
    call: Callable[[], object],
    model: nn.Module,
    forward: Callable[[], object],
    device: torch.device,
    micro_batches: int = 1,
) -> tuple[int, int]:
    """(the FLOPs of one more call as it runs, of them those that activation checkpointing
    recomputed). Recomputation stops once the saved tensors that the backward pass needs are
    back (torch's early stop), so it is less than the checkpointed modules' forward pass; it is
    found from one more call with the early stop off, which recomputes exactly that forward
    pass once per micro-batch: the model's own FLOPs are that call's less those forwards."""
    counted = count_flops(call, device)
    region = _checkpointed_forward_flops(model, forward) * micro_batches
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
    with FlopCounterMode(display=False, custom_mapping=CORRECTED_FORMULAS) as counter:

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
