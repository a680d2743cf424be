"""The digits as an IterableDataset: each rank streams its own shard, reshuffled every epoch. One
keeps its position (state_dict / load_state_dict), one does not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from datamodules.digits import DigitsDataModule


class DigitStream(IterableDataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
        self.images, self.labels, self.seed = images, labels, seed
        self.epoch, self.position = 0, 0  # the next epoch to stream, and how far into it

    def _shard(self) -> torch.Tensor:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return order[rank::world][: len(self.labels) // world]  # equal shards: every rank runs as many batches

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


class StreamingDigits(DigitsDataModule):
    """DigitsDataModule whose training data is a stream (stateful or not, with a length or not)."""

    def __init__(self, stateful: bool = True, sized: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stateful, self.sized = stateful, sized

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        images, labels = self.train_set.tensors
        self.stream = STREAMS[self.stateful, self.sized](images, labels, seed=self.split_seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.stream, batch_size=self.batch_size)
