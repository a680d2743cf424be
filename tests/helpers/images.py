"""A synthetic 3x32x32 image datamodule whose training samples are augmented at random, in the
DataLoader's workers, from every source of randomness a real pipeline uses."""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1
from torchvision.transforms import v2


class AugmentedSet(Dataset):
    """torchvision v1 RandomCrop + flip, a v2 RandomErasing, numpy noise and a python-random gain."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool) -> None:
        self.images, self.labels, self.augment = images, labels, augment
        self.crop_flip = v1.Compose([v1.RandomCrop(32, padding=4), v1.RandomHorizontalFlip()])
        self.erase = v2.RandomErasing(p=0.5, scale=(0.02, 0.1))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        if self.augment:
            x = self.erase(self.crop_flip(x))
            x = x + torch.from_numpy(np.random.normal(0.0, 0.05, size=tuple(x.shape)).astype(np.float32))
            x = x * random.uniform(0.9, 1.1)
        return x, self.labels[index]


class AugmentedImages(pl.LightningDataModule):
    def __init__(self, size: int = 256, val_size: int = 64, batch_size: int = 8, num_workers: int = 2,
                 persistent_workers: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.size, self.val_size, self.batch_size, self.seed = size, val_size, batch_size, seed
        self.num_workers, self.persistent_workers = num_workers, persistent_workers and num_workers > 0

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(self.seed)
        n = self.size + self.val_size
        labels = torch.randint(0, 10, (n,), generator=g)
        patterns = torch.rand(10, 3, 32, 32, generator=g)
        images = patterns[labels] + 0.3 * torch.rand(n, 3, 32, 32, generator=g) - 0.65  # about zero-mean
        self.train_set = AugmentedSet(images[: self.size], labels[: self.size], augment=True)
        self.val_set = AugmentedSet(images[self.size:], labels[self.size:], augment=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          persistent_workers=self.persistent_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.persistent_workers)
