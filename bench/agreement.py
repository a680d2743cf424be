"""Cost of preemption readiness: launch's stop agreement next to a training step.

    python bench/agreement.py [--procs 2] [--steps 300]

The paired throughput runs cannot resolve a cost under ~5 % on a shared machine, so this measures
the agreement itself, in place: 2 gloo processes (torchrun) train the throughput benchmark's model
with DDP, and after every optimizer step call launch's own `PreemptionHandler._agree_to_stop` (one
all-reduce of two int64: any rank signalled? and when to agree next). Both are timed on rank 0,
steps after the first 20. Prints the step time, the agreement's time, and the agreement's share of
training time at launch's period (about once a second) and, as the worst case, at every step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
WARMUP = 20


def worker(steps: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from bench.common import plain_ddp_setup
    from launcher.runtime.preemption import AGREE_EVERY_S, PreemptionHandler

    _, ddp, optimizer, sampler, loader = plain_ddp_setup()
    handler = PreemptionHandler([], "unused.ckpt", None, None)
    trainer = SimpleNamespace(global_step=0, global_rank=dist.get_rank(), world_size=dist.get_world_size(),
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))
    step_s, agree_s, epoch = [], [], 0
    while trainer.global_step < steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            start = time.perf_counter()
            loss = F.cross_entropy(ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stepped = time.perf_counter()
            trainer.global_step += 1
            stop = handler._agree_to_stop(trainer)
            agreed = time.perf_counter()
            assert not stop
            step_s.append(stepped - start)
            agree_s.append(agreed - stepped)
            if trainer.global_step >= steps:
                break
        epoch += 1
    if dist.get_rank() == 0:
        step, agree = statistics.median(step_s[WARMUP:]), statistics.median(agree_s[WARMUP:])
        p90 = statistics.quantiles(agree_s[WARMUP:], n=10)[-1]
        per_second = 1 / AGREE_EVERY_S  # launch agrees about once per AGREE_EVERY_S of training
        print(f"{dist.get_world_size()} processes, {len(step_s) - WARMUP} steps: training step {step * 1e3:.1f} ms "
              f"(median)")
        print(f"stop agreement (one all-reduce of 2 int64 over gloo): {agree * 1e6:.0f} us median, "
              f"{p90 * 1e6:.0f} us p90")
        print(f"at launch's period (every {AGREE_EVERY_S:g} s, i.e. every {max(1, round(AGREE_EVERY_S / step))} "
              f"steps): {100 * agree * per_second:.3f} % of training time")
        print(f"worst case, every step: {100 * agree / step:.2f} % of step time")
        print(f"ratio agreement cost / step time at launch's period: {agree * per_second:.5f} (target < 0.01)")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps)
        return
    threads = max(1, (os.cpu_count() or 1) // args.procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.procs),
           str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps)]
    sys.exit(subprocess.run(cmd, cwd=REPO, env=env).returncode)


if __name__ == "__main__":
    main()
