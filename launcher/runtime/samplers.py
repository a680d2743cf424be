"""The training sampler: DDP's DistributedSampler, able to start an epoch part-way."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch.utils.data import DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (to resume mid-epoch), and that
    reseeds the DataLoader's own generator every epoch, so creating a loader iterator (which
    draws a base seed for workers) never consumes the global RNG the model's dropout uses."""

    loader_generator: torch.Generator | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip_epoch: int | None = None
        self._skip_samples = 0

    def resume_at(self, epoch: int, samples: int) -> None:
        self._skip_epoch, self._skip_samples = epoch, samples

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed((self.seed * 1_000_003 + epoch * 7_919 + self.rank) % 2**63)

    def __iter__(self):  # noqa: ANN204
        indices = super().__iter__()
        if self._skip_samples and self.epoch == self._skip_epoch:
            skip, self._skip_samples = self._skip_samples, 0
            return itertools.islice(indices, skip, None)
        return indices
