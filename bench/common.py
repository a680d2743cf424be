"""Shared pieces of the benchmarks: the same model and data for ours and the plain baseline."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from models.cnn import SmallCNN

SAMPLES, BATCH = 4096, 64


def synthetic_mnist(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(SAMPLES, 1, 28, 28, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g))


class SyntheticDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = BATCH) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        self.train_set = synthetic_mnist()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


class StepTimer:
    """Rank zero's wall time of each training step, written as JSON for the bench script."""

    def __init__(self, out: str | None) -> None:
        self.out, self.times, self._t = out, [], None

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self) -> None:
        if self._t is not None:
            self.times.append(time.perf_counter() - self._t)

    def lap(self) -> None:
        """Time between consecutive calls: the whole step, data loading and hooks included."""
        now = time.perf_counter()
        if self._t is not None:
            self.times.append(now - self._t)
        self._t = now

    def save(self, rank: int) -> None:
        if self.out and rank == 0:
            Path(self.out).write_text(json.dumps(self.times))


class TimedCNN(SmallCNN):
    """SmallCNN that records the wall time between the starts of consecutive training batches."""

    def __init__(self, timings: str = "", sync_loss: bool = False, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.timer = StepTimer(timings or os.environ.get("BENCH_TIMINGS"))
        self.sync_step_loss = sync_loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        self.timer.lap()

    def on_train_end(self) -> None:
        self.timer.save(self.global_rank)


def plain_ddp_setup() -> tuple[TimedCNN, DistributedDataParallel, torch.optim.Optimizer, DistributedSampler,
                               DataLoader]:
    """The hand-written side (run under torchrun): a gloo process group, the seeded model wrapped
    in DDP, its own optimizer, and the synthetic data sharded by a DistributedSampler."""
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = TimedCNN()
    ddp = DistributedDataParallel(model)
    data = synthetic_mnist()
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    return model, ddp, model.configure_optimizers(), sampler, DataLoader(data, batch_size=BATCH, sampler=sampler)
