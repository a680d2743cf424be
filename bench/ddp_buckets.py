"""The cost of keeping DDP's gradient buckets in one layout (exact resume; see
launcher/runtime/ddp_compat.py), in a plain DDP loop with the same model and data, three ways:
DDP's default (its buckets rebuilt after the first step: not exact), launch's default (the buckets
laid out once before the first step, `ddp_compat.fix_bucket_layout`), and
`find_unused_parameters=True` (`job.find_unused_parameters`: DDP never rebuilds, and walks the
autograd graph every step).

    python bench/ddp_buckets.py [--procs 2] [--repeats 5] [--steps 40]

Each repeat runs the three back to back (paired, to cancel this VM's drift); a ratio is the median
of the per-repeat ratios of median step times to DDP's default: > 1 means slower.
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
from launcher.runtime import ddp_compat  # noqa: E402

SETTINGS = ("default", "launch", "unused")


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...], int]:
    torch.manual_seed(0)
    if name == "resnet18":
        from models.resnet import ResNet18

        return ResNet18(), (3, 32, 32), 16
    from models.cnn import SmallCNN

    return SmallCNN(), (1, 28, 28), 64


def rank_main(rank: int, world: int, port: int, name: str, setting: str, steps: int, out: object) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, shape, batch = build(name)
    ddp = DistributedDataParallel(model, find_unused_parameters=setting == "unused")
    if setting == "launch" and not ddp_compat.fix_bucket_layout(ddp):
        raise SystemExit("fix_bucket_layout did nothing")
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


def step_time(name: str, setting: str, procs: int, steps: int) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    mp.spawn(rank_main, args=(procs, port, name, setting, steps, out), nprocs=procs)
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
        times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
        for _ in range(args.repeats):
            for setting in SETTINGS:
                times[setting].append(step_time(name, setting, args.procs, args.steps))
        result = {f"{s}_step_ms": round(1000 * statistics.median(t), 2) for s, t in times.items()}
        for setting in SETTINGS[1:]:
            ratios = [a / b for a, b in zip(times[setting], times["default"], strict=True)]
            result[f"{setting}_ratio"] = round(statistics.median(ratios), 4)
            result[f"{setting}_ratios"] = [round(r, 4) for r in ratios]
        results[name] = result
        print(f"{name}: median step {result['default_step_ms']} ms DDP's default, {result['launch_step_ms']} ms "
              f"launch's fixed layout (ratio {result['launch_ratio']}, repeats {result['launch_ratios']}), "
              f"{result['unused_step_ms']} ms find_unused_parameters (ratio {result['unused_ratio']}, "
              f"repeats {result['unused_ratios']})", flush=True)
    print(json.dumps({"procs": args.procs, "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
