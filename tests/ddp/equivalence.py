"""Run by tests/test_distributed.py under torchrun (gloo, 2 ranks): b3's training step on a DDP
model, in float64. Rank 0 writes what the test checks to the JSON path given.

- the weights after one update of 2 ranks x batch B x K micro-batches (accumulated with
  no_sync on every micro-batch but the last), every rank's copy;
- the all-reduce calls (through a comm hook) per optimizer step, with K and with 1 micro-batch.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from b3core.workloads.training import train_step

BATCH, MICRO_BATCHES, FEATURES, CLASSES = 4, 3, 6, 5


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, CLASSES)).double()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """2 x BATCH x MICRO_BATCHES samples: rank r's micro-batch i is one slice of it."""
    g = torch.Generator().manual_seed(1)
    n = 2 * BATCH * MICRO_BATCHES
    return torch.randn(n, FEATURES, generator=g, dtype=torch.float64), torch.randint(
        CLASSES, (n,), generator=g
    )


def rank_micro_batches(rank: int, k: int):
    x, y = global_batch()
    per_rank = len(x) // 2
    xs, ys = x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank]
    size = per_rank // k
    return [(xs[i * size : (i + 1) * size], ys[i * size : (i + 1) * size]) for i in range(k)]


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ddp = nn.parallel.DistributedDataParallel(model())
    calls = []

    def allreduce_hook(state, bucket):
        calls.append(bucket.index())
        tensor = bucket.buffer().div_(dist.get_world_size())
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda f: f.value()[0])

    ddp.register_comm_hook(None, allreduce_hook)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    train_step(ddp, optimizer, rank_micro_batches(rank, MICRO_BATCHES), no_sync=ddp.no_sync)
    with_k = len(calls)
    weights = [p.detach().clone() for p in ddp.module.parameters()]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, [w.tolist() for w in weights])
    calls.clear()
    train_step(ddp, optimizer, rank_micro_batches(rank, 1), no_sync=ddp.no_sync)
    with_one = len(calls)
    if rank == 0:
        payload = {"weights": everyone, "calls_with_k": with_k, "calls_with_one": with_one}
        with open(out, "w") as f:
            json.dump(payload, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
