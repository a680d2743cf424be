"""What a resume does to DDP, without Lightning: train, or train, re-wrap a copy in a new DDP and
go on. Run by tests in spawned gloo ranks on the CPU."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.ReLU(), torch.nn.Linear(300, 200), torch.nn.ReLU(),
                               torch.nn.Linear(200, 10))


def train(ddp: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int, first: int, steps: int) -> None:
    for step in range(first, first + steps):
        g = torch.Generator().manual_seed(1000 * step + rank)
        x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        optimizer.step()


def rank_main(rank: int, world: int, port: int, ddp_kwargs: dict[str, Any], out: Any) -> None:
    """Rank `rank`: 6 steps in one DDP, and 3 + 3 steps with a new DDP between (a resume)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    straight = model()
    optimizer = torch.optim.SGD(straight.parameters(), lr=0.1)
    train(DistributedDataParallel(straight, **ddp_kwargs), optimizer, rank, 0, 6)
    first = model()
    optimizer = torch.optim.SGD(first.parameters(), lr=0.1)
    train(DistributedDataParallel(first, **ddp_kwargs), optimizer, rank, 0, 3)
    resumed = model()
    resumed.load_state_dict(first.state_dict())
    optimizer_2 = torch.optim.SGD(resumed.parameters(), lr=0.1)
    optimizer_2.load_state_dict(optimizer.state_dict())
    train(DistributedDataParallel(resumed, **ddp_kwargs), optimizer_2, rank, 3, 3)
    if rank == 0:
        out.put(max((a - b).abs().max().item() for a, b in zip(straight.parameters(), resumed.parameters(), strict=True)))
    dist.destroy_process_group()
