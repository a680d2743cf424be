"""The digits as an IterableDataset: each rank (and each DataLoader worker of it) streams its own
shard, reshuffled every epoch. One keeps its position (state_dict / load_state_dict), one does not;
either is loaded by a plain DataLoader in the main process or by torchdata's StatefulDataLoader with
workers. Plain streams (no state, told their epoch, augmenting) are loaded by a plain DataLoader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.digits import DigitsDataModule


def shard(size: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's (and DataLoader worker's) share of the epoch's order of `size` samples."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch))
    mine = order[rank::world][: size // world]  # equal shards: every rank runs as many batches
    worker = get_worker_info()
    return mine[worker.id::worker.num_workers] if worker else mine


class DigitStream(IterableDataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
        self.images, self.labels, self.seed = images, labels, seed
        self.epoch, self.position = 0, 0  # the next epoch to stream, and how far into it

    def _shard(self) -> torch.Tensor:
        return shard(len(self.labels), self.seed, self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shard = self._shard()
        while self.position < len(shard):
            i = shard[self.position]
            self.position += 1
            yield self.images[i], self.labels[i]
        self.epoch, self.position = self.epoch + 1, 0


class Stateful:
    position: int
    epoch: int

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class Sized:
    labels: torch.Tensor

    def __len__(self) -> int:  # with a length, Lightning fetches no batch ahead of training
        world = dist.get_world_size() if dist.is_initialized() else 1
        return len(self.labels) // world


STREAMS = {(stateful, sized): type("".join(["Stateful" * stateful, "Sized" * sized, "DigitStream"]),
                                   tuple([Stateful] * stateful + [Sized] * sized + [DigitStream]), {})
           for stateful in (False, True) for sized in (False, True)}


class EpochStream(IterableDataset):
    """A stream without state, told its epoch by set_epoch (as Hugging Face's streaming datasets
    are): each rank and worker streams its share of the epoch's order, every image with random
    noise drawn from torch's global generator (augmentation)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int, noise: float = 0.5) -> None:
        self.images, self.labels, self.seed, self.noise = images, labels, seed, noise
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in shard(len(self.labels), self.seed, self.epoch):
            yield self.images[i] + self.noise * torch.randn(self.images[i].shape), self.labels[i]


class UnseededStream(EpochStream):
    """Its noise comes from a generator the OS seeds anew each epoch: never the same twice."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng()
        for i in shard(len(self.labels), self.seed, self.epoch):
            noise = torch.from_numpy(rng.normal(size=tuple(self.images[i].shape))).to(self.images.dtype)
            yield self.images[i] + self.noise * noise, self.labels[i]


PLAIN_STREAMS = {"epoch": EpochStream, "unseeded": UnseededStream}


class StreamingDigits(DigitsDataModule):
    """DigitsDataModule whose training data is a stream (stateful or not, with a length or not)."""

    def __init__(self, stateful: bool = True, sized: bool = True, workers: int = 0, plain: str = "",
                 persistent: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stateful, self.sized, self.workers, self.plain, self.persistent = stateful, sized, workers, plain, persistent

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        images, labels = self.train_set.tensors
        kind = PLAIN_STREAMS[self.plain] if self.plain else STREAMS[self.stateful, self.sized]
        self.stream = kind(images, labels, seed=self.split_seed)

    def train_dataloader(self) -> DataLoader:
        if self.plain:  # a plain DataLoader, any workers
            return DataLoader(self.stream, batch_size=self.batch_size, num_workers=self.workers,
                              persistent_workers=self.persistent)
        if self.workers:  # each worker streams (and keeps the state of) its own part
            return StatefulDataLoader(self.stream, batch_size=self.batch_size, num_workers=self.workers,
                                      persistent_workers=True)
        return DataLoader(self.stream, batch_size=self.batch_size)
