"""The baseline: a hand-written PyTorch DDP loop, same model, data, batch size, optimizer and metrics.

    torchrun --nproc-per-node P bench/plain_ddp.py STEPS TIMINGS_JSON
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.getcwd())
from bench.common import StepTimer, hand_written_step, plain_ddp_setup  # noqa: E402


def main() -> None:
    steps, out = int(sys.argv[1]), sys.argv[2]
    model, ddp, optimizer, sampler, loader = plain_ddp_setup()
    timer = StepTimer(out)
    done, epoch = 0, 0
    ddp.train()
    # what the model's training_step computes besides the loss, as a careful hand-written loop
    # would: its torchmetrics accuracy every step, and at each epoch end that accuracy and the
    # sample-weighted mean loss over every rank
    accuracy = model.train_acc
    while done < steps:
        sampler.set_epoch(epoch)
        loss_sum, samples = torch.zeros(()), torch.zeros(())
        for x, y in loader:
            timer.lap()
            hand_written_step(ddp, accuracy, optimizer, x, y, loss_sum, samples)
            done += 1
            if done >= steps:
                break
        accuracy.compute()
        accuracy.reset()
        totals = torch.stack([loss_sum, samples])
        dist.all_reduce(totals)
        epoch += 1
    timer.lap()
    timer.save(dist.get_rank())
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
