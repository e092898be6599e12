"""Activation checkpointing, through torch's own machinery: the chosen modules are wrapped by
`apply_activation_checkpointing` (or the whole model by `checkpoint_wrapper`), which run them
under `torch.utils.checkpoint` with `use_reentrant=False`. Their activations are freed after
the forward pass and recomputed in the backward pass.

"blocks" are a model's repeated blocks: the modules its `b3_checkpoint_blocks` hook names,
else, in each nn.Sequential or nn.ModuleList, the children of the class that repeats most
(ResNet's basic and bottleneck blocks, MobileNet's inverted residuals, a ViT's encoder layers,
a transformer's layers), the outermost ones only.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

from b3core.errors import B3Error

HOOK = "b3_checkpoint_blocks"


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules that "blocks" wraps, outermost first, none inside another."""
    hook = getattr(model, HOOK, None)
    if hook is not None:
        try:
            named = [hook] if isinstance(hook, nn.Module) else list(
                hook() if callable(hook) else hook)  # fmt: skip
        except TypeError as exc:
            raise B3Error(f"the model's {HOOK} must name modules: {exc}") from None
        if not named or not all(isinstance(m, nn.Module) for m in named):
            raise B3Error(f"the model's {HOOK} must name modules, got {named!r}")
        return _outermost(model, named)
    found = []
    for container in model.modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        composite = [child for child in container if next(child.children(), None) is not None]
        counts = collections.Counter(type(child) for child in composite)
        if not counts:
            continue
        kind, repeats = counts.most_common(1)[0]
        if repeats >= 2:
            found += [child for child in composite if type(child) is kind]
    return _outermost(model, found)


def _outermost(model: nn.Module, modules: Iterable[nn.Module]) -> list[nn.Module]:
    chosen = {id(m) for m in modules}
    outermost, inside = [], set()
    for module in model.modules():  # parents before their children
        if id(module) in inside:
            inside.update(id(m) for m in module.children())
        elif id(module) in chosen:
            outermost.append(module)
            inside.update(id(m) for m in module.children())
    return outermost


def apply_checkpointing(model: nn.Module, policy: str, model_name: str) -> nn.Module:
    """The model with `policy`'s modules checkpointed: "none" leaves it, "all" checkpoints the
    whole forward pass (only its input is kept), "blocks" each block."""
    if policy == "none":
        return model
    if policy == "all":
        return checkpoint_wrapper(model)
    blocks = checkpoint_blocks(model)
    if not blocks:
        raise B3Error(
            f"{model_name} has no repeated blocks to checkpoint: name them with a {HOOK} "
            "attribute (docs/own-model.md), or checkpoint all of it: "
            "--activation-checkpointing all (b3 plan: --checkpointing all)"
        )
    if any(block is model for block in blocks):
        return checkpoint_wrapper(model)
    wrapped = {id(block) for block in blocks}
    apply_activation_checkpointing(model, check_fn=lambda module: id(module) in wrapped)
    return model
