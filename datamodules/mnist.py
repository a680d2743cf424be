"""MNIST through torchvision: `prepare_data` downloads (once per job, or once per node)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import MNIST


class MNISTDataModule(pl.LightningDataModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, val_size: int = 5000, num_workers: int = 2,
                 split_seed: int = 0) -> None:
        super().__init__()
        self.data_dir, self.batch_size, self.num_workers = data_dir, batch_size, num_workers
        self.val_size, self.split_seed = val_size, split_seed
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])

    def prepare_data(self) -> None:
        MNIST(self.data_dir, train=True, download=True)
        MNIST(self.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        full = MNIST(self.data_dir, train=True, transform=self.transform)
        if not 0 < self.val_size < len(full):
            raise ValueError(f"val_size={self.val_size} must be between 1 and {len(full) - 1}")
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        self.val_set = Subset(full, order[: self.val_size])
        self.train_set = Subset(full, order[self.val_size:])
        self.test_set = MNIST(self.data_dir, train=False, transform=self.transform)

    def _loader(self, dataset, shuffle: bool = False) -> DataLoader:  # noqa: ANN001
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
