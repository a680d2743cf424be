"""Cost of gathering every rank's small checkpoint state (RNG, metric states) at each save.

    python bench/rank_states.py [--procs 3] [--saves 200] [--scale 8 64 1024 8192]

Every checkpoint launch writes (epoch ends, last.ckpt, the periodic and the preemption ones) first
gathers each rank's RNG and metric states to rank zero (`PreemptionHandler.on_save_checkpoint`).
Two parts:
1. In place: `--procs` gloo processes (torchrun) gather the throughput benchmark's state (its model's
   three torchmetrics accuracies and the RNG states) `--saves` times each way, alternated: with
   `torch.distributed.all_gather_object` (launch until this script) and with launch's
   `rank_states.gather_to_rank_zero`; the median wall and CPU time of one gather on rank zero and
   on the other ranks.
2. At scale, arithmetic from this machine's costs of one rank's state (pickling, unpickling): the
   CPU time a save costs rank zero and each other rank at `--scale` ranks, each way
   (all_gather_object: every rank unpickles every rank's state; launch: rank zero alone).
Prints the ratios last (old / new: above 1, launch's is cheaper).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def the_state(rank: int) -> dict:
    """One rank's entry as PreemptionHandler builds it at an epoch end, for the benchmark's model."""
    import torch

    sys.path.insert(0, str(REPO))
    from bench.common import TimedCNN
    from launcher.runtime.preemption import _metric_states, _rng_state

    torch.manual_seed(rank)
    model = TimedCNN()
    return {"rank": rank, "rng": _rng_state(), "metrics": _metric_states(model), "accumulators": {}, "data": {}}


def worker(saves: int) -> None:
    import torch.distributed as dist

    from launcher.runtime.rank_states import gather_to_rank_zero

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = the_state(rank)
    times: dict[str, list[tuple[float, float]]] = {"all_gather_object": [], "launch": []}
    for i in range(saves):
        for way in (("all_gather_object", "launch") if i % 2 else ("launch", "all_gather_object")):
            dist.barrier()
            wall, cpu = time.perf_counter(), time.thread_time()
            if way == "launch":
                gather_to_rank_zero(mine, world)
            else:
                dist.all_gather_object([None] * world, mine)
            times[way].append((time.perf_counter() - wall, time.thread_time() - cpu))
    for who, ranks in (("rank zero", [0]), ("other ranks", list(range(1, world)))):
        gathered: list = [None] * world
        dist.all_gather_object(gathered, times)
        if rank == 0:
            for way in times:
                walls = [w for r in ranks for w, _ in gathered[r][way]]
                cpus = [c for r in ranks for _, c in gathered[r][way]]
                print(f"{who:11s} {way:17s} median wall {1e3 * statistics.median(walls):6.3f} ms, "
                      f"CPU {1e3 * statistics.median(cpus):6.3f} ms", flush=True)
    dist.barrier()  # no rank tears gloo down while another still prints
    dist.destroy_process_group()


def per_state_costs(repeats: int = 300) -> dict[str, float]:
    """This machine's CPU time (s) to send and to receive one rank's state, each way."""
    import pickle

    import torch
    import torch.distributed.distributed_c10d as c10d

    from launcher.runtime.rank_states import pack, unpack

    state = the_state(0)
    cpu = torch.device("cpu")

    def timed(fn) -> float:  # noqa: ANN001
        start = time.thread_time()
        for _ in range(repeats):
            fn()
        return (time.thread_time() - start) / repeats

    tensor, size = c10d._object_to_tensor(state, cpu, None)
    packed = pickle.dumps(pack(state))
    return {"old_send": timed(lambda: c10d._object_to_tensor(state, cpu, None)),
            "old_receive": timed(lambda: c10d._tensor_to_object(tensor, size, None)),
            "new_send": timed(lambda: pickle.dumps(pack(state))),
            "new_receive": timed(lambda: unpack(pickle.loads(packed)))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=3)
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--scale", type=int, nargs="+", default=[8, 64, 1024, 8192])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.saves)
        return
    print(f"1. {args.procs} gloo ranks, {args.saves} gathers each way (alternated), one gather:", flush=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                    str(args.procs), __file__, "--worker", "--saves", str(args.saves)],
                   cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    costs = per_state_costs()
    print("2. one rank's state on this machine: all_gather_object's pickling "
          f"{1e3 * costs['old_send']:.3f} ms, unpickling {1e3 * costs['old_receive']:.3f} ms; launch's "
          f"{1e3 * costs['new_send']:.3f} ms and {1e3 * costs['new_receive']:.3f} ms")
    for ranks in args.scale:
        old = costs["old_send"] + ranks * costs["old_receive"]  # every rank, rank zero included
        new_zero = costs["new_send"] + ranks * costs["new_receive"]
        print(f"   {ranks:5d} ranks: CPU a save, rank zero {old:.3f} s -> {new_zero:.3f} s "
              f"(ratio {old / new_zero:.1f}); each other rank {old:.3f} s -> {costs['new_send']:.4f} s "
              f"(ratio {old / costs['new_send']:.0f})")


if __name__ == "__main__":
    main()
