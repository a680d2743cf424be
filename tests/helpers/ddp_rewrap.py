"""What a resume does to DDP, without Lightning: train, or train, re-wrap a copy in a new DDP and
go on. Run by tests in spawned gloo ranks on the CPU."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from launcher.runtime import ddp_compat


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


def rank_main(rank: int, world: int, port: int, settings: list[tuple[dict[str, Any], bool]], out: Any) -> None:
    """Rank `rank`, for each (DDP kwargs, fix) setting: 6 steps in one DDP, and 3 + 3 steps with a
    new DDP between (a resume); `fix`: each DDP's buckets laid out by launch's
    `ddp_compat.fix_bucket_layout` before its first step. Rank 0 puts the largest difference
    between the two runs' weights for each setting, and whether fixing the layout left the weights,
    the gradients and the RNG as they were."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    untouched = True

    def wrap(module: torch.nn.Module, ddp_kwargs: dict[str, Any], fix: bool) -> DistributedDataParallel:
        nonlocal untouched
        ddp = DistributedDataParallel(module, **ddp_kwargs)
        if fix:
            weights, grads = [p.clone() for p in module.parameters()], [p.grad for p in module.parameters()]
            rng = torch.get_rng_state()
            calls = []  # the job's own gradient hooks, of both kinds
            first = next(module.parameters())
            first.register_hook(lambda grad: calls.append("tensor"))
            first.register_post_accumulate_grad_hook(lambda param: calls.append("accumulated"))
            if not ddp_compat.fix_bucket_layout(ddp):
                raise AssertionError("fix_bucket_layout did nothing")
            untouched &= all(torch.equal(a, p) for a, p in zip(weights, module.parameters(), strict=True))
            untouched &= all(g is p.grad for g, p in zip(grads, module.parameters(), strict=True))
            untouched &= torch.equal(rng, torch.get_rng_state()) and calls == []
            first.sum().backward()  # and they run again after it
            untouched &= calls == ["tensor", "accumulated"]
            first.grad = None
        return ddp

    differences = []
    for ddp_kwargs, fix in settings:
        straight = model()
        optimizer = torch.optim.SGD(straight.parameters(), lr=0.1)
        train(wrap(straight, ddp_kwargs, fix), optimizer, rank, 0, 6)
        first = model()
        optimizer = torch.optim.SGD(first.parameters(), lr=0.1)
        train(wrap(first, ddp_kwargs, fix), optimizer, rank, 0, 3)
        resumed = model()
        resumed.load_state_dict(first.state_dict())
        optimizer_2 = torch.optim.SGD(resumed.parameters(), lr=0.1)
        optimizer_2.load_state_dict(optimizer.state_dict())
        train(wrap(resumed, ddp_kwargs, fix), optimizer_2, rank, 3, 3)
        differences.append(max((a - b).abs().max().item()
                               for a, b in zip(straight.parameters(), resumed.parameters(), strict=True)))
    if rank == 0:
        out.put((differences, untouched))
    dist.destroy_process_group()
