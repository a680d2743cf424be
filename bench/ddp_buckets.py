"""The cost of launch's exact-resume DDP setting: find_unused_parameters=True (DDP then never
rebuilds its gradient buckets, so every attempt reduces in the same order; see
launcher/runtime/strategy.py). A plain DDP loop, the same model and data, with and without it.

    python bench/ddp_buckets.py [--procs 2] [--repeats 5] [--steps 40]

Each repeat runs both settings back to back (paired, to cancel this VM's drift); the ratio is the
median of the per-repeat ratios of median step times: > 1 means the exact setting is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.getcwd())


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...], int]:
    torch.manual_seed(0)
    if name == "resnet18":
        from models.resnet import ResNet18

        return ResNet18(), (3, 32, 32), 16
    from models.cnn import SmallCNN

    return SmallCNN(), (1, 28, 28), 64


def rank_main(rank: int, world: int, port: int, name: str, exact: bool, steps: int, out: object) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, shape, batch = build(name)
    ddp = DistributedDataParallel(model, find_unused_parameters=exact)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(statistics.median(times[3:]))  # after DDP's first iterations (bucket rebuild)
    dist.barrier()  # gloo's threads must not be torn down while a peer still talks
    dist.destroy_process_group()


def step_time(name: str, exact: bool, procs: int, steps: int) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    mp.spawn(rank_main, args=(procs, port, name, exact, steps, out), nprocs=procs)
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--models", default="cnn,resnet18")
    args = parser.parse_args()
    results = {}
    for name in args.models.split(","):
        ratios, plain_times, exact_times = [], [], []
        for _ in range(args.repeats):
            plain = step_time(name, False, args.procs, args.steps)
            exact = step_time(name, True, args.procs, args.steps)
            plain_times.append(plain)
            exact_times.append(exact)
            ratios.append(exact / plain)
        results[name] = {"plain_step_ms": round(1000 * statistics.median(plain_times), 2),
                         "exact_step_ms": round(1000 * statistics.median(exact_times), 2),
                         "ratio": round(statistics.median(ratios), 4), "ratios": [round(r, 4) for r in ratios]}
        r = results[name]
        print(f"{name}: step {r['plain_step_ms']} ms plain, {r['exact_step_ms']} ms with find_unused_parameters: "
              f"ratio {r['ratio']} (repeats {min(r['ratios'])}-{max(r['ratios'])})", flush=True)
    print(json.dumps({"procs": args.procs, "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
