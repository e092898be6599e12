"""Ghost BatchNorm (Hoffer et al. 2017): in training, BatchNorm's statistics come from virtual
batches of a fixed size rather than the whole batch, so a large batch normalises as a small
one would. A module swap: `use_ghost_batch_norm(model, n)` replaces every BatchNorm layer of
any model with a GhostBatchNorm that shares its parameters and running buffers.

Each virtual batch is normalised with its own mean and biased variance, and updates the running
statistics as a batch of its own would, in order (what a run of small batches would leave).
In eval mode it is the wrapped BatchNorm, unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from b3core.errors import B3Error


class GhostBatchNorm(nn.Module):
    def __init__(self, batch_norm: _BatchNorm, virtual_batch: int):
        super().__init__()
        if virtual_batch < 1:
            raise B3Error(f"a Ghost BatchNorm virtual batch must be positive, got {virtual_batch}")
        self.bn, self.virtual_batch = batch_norm, virtual_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] == self.virtual_batch:
            return self.bn(x)
        if x.shape[0] % self.virtual_batch:
            raise B3Error(
                f"Ghost BatchNorm: a batch of {x.shape[0]} does not split into virtual "
                f"batches of {self.virtual_batch}"
            )
        return torch.cat([self.bn(chunk) for chunk in x.split(self.virtual_batch)])

    def extra_repr(self) -> str:
        return f"virtual_batch={self.virtual_batch}"


def use_ghost_batch_norm(model: nn.Module, virtual_batch: int) -> int:
    """Swap every BatchNorm layer of `model` (1d, 2d, 3d; SyncBatchNorm too) for Ghost
    BatchNorm, in place; returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, GhostBatchNorm(child, virtual_batch))
                swapped += 1
    return swapped
