"""Checkpoint saves of large models: DDP's full state written by rank zero vs FSDP's sharded state
written by every rank, and what an asynchronous periodic save costs the training steps.

    python bench/sharded_checkpoints.py [--sizes 10,100,300] [--ranks 1,2,4] [--steps 30] [--every 10]

Processes over gloo on this machine's CPUs, a stack of Linear layers of the given size (millions of
parameters) with AdamW's state (so a checkpoint holds 3x the parameters), written with launch's own
code: `AtomicCheckpointIO` (DDP: one file, fsynced and renamed by rank zero while the others wait)
and `fsdp.save_sharded` (FSDP2 `fully_shard`, each rank its shard, then meta.pt, the marker and the
rename). Per size and world size: the save's wall time (slowest rank) and the bytes each rank wrote.

Then, at the middle size and 2 ranks, training steps (forward, backward, AdamW), interleaved twice:
no save; a synchronous save every N steps; a background save every N steps (launch's periodic
checkpoint, `strategy.async_checkpoints`). Per mode: how long each save blocks the training thread
(sync: the whole write; background: the copy off the training path, plus any wait for the previous
write), and the median step time next to the steps without saves (a background write shares the
machine with training: on this 2-core CPU machine it competes for the cores the ranks compute on;
on GPU nodes the ranks compute on the GPUs). Its share of training time at a save every 5 minutes
is the blocking time / 300 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WIDTH = 2048  # each layer WIDTH x WIDTH (4.2 M parameters)


def model_of(millions: int) -> nn.Module:
    torch.manual_seed(0)
    layers = max(1, round(millions * 1e6 / (WIDTH * WIDTH + WIDTH)))
    return nn.Sequential(*(nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()) for _ in range(layers)))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x = torch.randn(8, WIDTH)
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def setup(kind: str, millions: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = model_of(millions)
    if kind == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for unit in model:
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    train_step(model, optimizer)  # AdamW's state exists
    return model, optimizer


def save(kind: str, model: nn.Module, optimizer: torch.optim.Optimizer, path: Path, background: object = None,
         group: object = None) -> None:
    """One checkpoint through launch's code paths (background: the periodic save's)."""
    from launcher.runtime.checkpoint_io import AtomicCheckpointIO, cpu_copy

    if kind == "fsdp":
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        from launcher.runtime.fsdp import save_sharded, save_sharded_in_background

        state = {"state_dict": get_model_state_dict(model), "optimizer_0": get_optimizer_state_dict(model, optimizer)}
        if background is not None:
            save_sharded_in_background(state, {"global_step": 0}, path, group, background)
        else:
            save_sharded(state, {"global_step": 0}, path)
        return
    if dist.get_rank() == 0:  # DDP: rank zero writes the full state (Lightning's Strategy.save_checkpoint)
        state = {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}
        if background is not None:
            copy = cpu_copy(state)
            background.start(lambda: AtomicCheckpointIO().save_checkpoint(copy, path))
        else:
            AtomicCheckpointIO().save_checkpoint(state, path)
    dist.barrier()


def written_by_rank(kind: str, path: Path, world: int) -> list[int]:
    if kind == "ddp":
        return [path.stat().st_size] + [0] * (world - 1)
    shards = [(path / f"__{r}_0.distcp").stat().st_size for r in range(world)]
    shards[0] += sum(p.stat().st_size for p in path.iterdir() if not p.name.endswith(".distcp"))
    return shards


def _saves(rank: int, world: int, port: int, kind: str, millions: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, optimizer = setup(kind, millions)
    path = Path(root) / f"{kind}-{millions}-{world}.ckpt"
    times = []
    for _ in range(2):  # the second is timed as well: the median of two
        dist.barrier()
        began = time.perf_counter()
        save(kind, model, optimizer, path)
        took = torch.tensor([time.perf_counter() - began])
        dist.all_reduce(took, op=dist.ReduceOp.MAX)
        times.append(float(took))
    if rank == 0:
        params = sum(p.numel() for p in model_of(millions).parameters())
        Path(out).write_text(json.dumps({"kind": kind, "millions": millions, "world": world, "params": params,
                                         "save_s": min(times), "bytes": written_by_rank(kind, path, world)}))
    dist.barrier()
    dist.destroy_process_group()


def _steps(rank: int, world: int, port: int, kind: str, millions: int, root: str, out: str, steps: int,
           every: int) -> None:
    from launcher.runtime.checkpoint_io import BackgroundWriter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = dist.new_group(backend="gloo")
    model, optimizer = setup(kind, millions)
    writer = BackgroundWriter()
    result: dict[str, dict[str, list[float]]] = {}
    for mode in ("none", "sync", "background", "none", "sync", "background"):  # twice, interleaved
        rec = result.setdefault(mode, {"step_s": [], "blocked_s": [], "write_s": []})
        dist.barrier()
        for step in range(1, steps + 1):
            began = time.perf_counter()
            train_step(model, optimizer)
            rec["step_s"].append(time.perf_counter() - began)
            if mode != "none" and step % every == 0:
                began = time.perf_counter()  # what the training thread waits for: the whole save, or the copy
                save(kind, model, optimizer, Path(root) / f"periodic-{kind}.ckpt",
                     writer if mode == "background" else None, group)
                rec["blocked_s"].append(time.perf_counter() - began)
        began = time.perf_counter()
        writer.wait()
        if writer.last_write_s is not None and mode == "background":
            rec["write_s"].append(writer.last_write_s)
        dist.barrier()
    if rank == 0:
        summary = {mode: {"step_s": statistics.median(r["step_s"]),
                          "blocked_s": statistics.median(r["blocked_s"]) if r["blocked_s"] else 0.0,
                          "write_s": statistics.median(r["write_s"]) if r["write_s"] else None}
                   for mode, r in result.items()}
        Path(out).write_text(json.dumps({"kind": kind, "millions": millions, "world": world, "steps": steps,
                                         "every": every, **summary}))
    dist.barrier()
    dist.destroy_process_group()


def spawn(target: object, world: int, *args: object) -> dict:
    from launcher.config import free_port

    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        mp.spawn(target, args=(world, free_port(), *args[:3], fh.name, *args[3:]), nprocs=world, join=True)
        return json.loads(Path(fh.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,300", help="model sizes, millions of parameters")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--steps", type=int, default=30, help="training steps per timing run")
    parser.add_argument("--every", type=int, default=10, help="a save every N steps in the timing runs")
    parser.add_argument("--dir", help="where checkpoints go (default: a temporary directory)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--timing-only", action="store_true", help="skip the save-size table")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    rows, lines = [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        for millions in ([] if args.timing_only else sizes):
            for world in ranks:
                for kind in ("ddp", "fsdp"):
                    row = spawn(_saves, world, kind, millions, root)
                    rows.append(row)
                    per_rank = "/".join(f"{b / 2**20:.0f}" for b in row["bytes"])
                    lines.append(f"{millions:>4}M params, {world} rank(s), {kind}: save {row['save_s']:.2f} s, MiB "
                                 f"written per rank {per_rank}")
                    print(lines[-1], flush=True)
                    for leftover in Path(root).iterdir():
                        if leftover.is_dir():
                            import shutil

                            shutil.rmtree(leftover)
                        else:
                            leftover.unlink()
            for world in ranks:
                if world == 1:
                    continue
                ddp = next(r for r in rows if r["kind"] == "ddp" and r["world"] == world and r["millions"] == millions)
                fsdp = next(r for r in rows if r["kind"] == "fsdp" and r["world"] == world and r["millions"] == millions)
                lines.append(f"{millions:>4}M, {world} ranks: sharded/full save time ratio "
                             f"{fsdp['save_s'] / ddp['save_s']:.2f}, largest per-rank write ratio "
                             f"{max(fsdp['bytes']) / max(ddp['bytes']):.2f}")
                print(lines[-1], flush=True)
        middle = sizes[len(sizes) // 2]
        timing = []
        for kind in ("ddp", "fsdp"):
            t = spawn(_steps, 2, kind, middle, root, args.steps, args.every)
            base = t["none"]["step_s"]
            for mode in ("sync", "background"):
                blocked, step = t[mode]["blocked_s"], t[mode]["step_s"]
                lines.append(f"{kind}, {middle}M, 2 ranks, a save every {args.every} steps: {mode} save blocks training "
                             f"{blocked:.3f} s (median step {step:.3f} s vs {base:.3f} s without saves: x{step / base:.2f}); "
                             f"a save every 5 minutes costs {100 * blocked / 300:.3f} % of training time in blocking")
                print(lines[-1], flush=True)
            timing.append(t)
    if args.out:
        Path(args.out).write_text(json.dumps({"saves": rows, "timing": timing, "lines": lines}, indent=1))


if __name__ == "__main__":
    main()
