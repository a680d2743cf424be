"""CIFAR-10 through torchvision: `prepare_data` downloads (once per job, or once per node)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import CIFAR10

from datamodules import pl

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR10DataModule(pl.LightningDataModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, val_size: int = 5000, num_workers: int = 4,
                 augment: bool = True, split_seed: int = 0) -> None:
        super().__init__()
        self.data_dir, self.batch_size, self.num_workers = data_dir, batch_size, num_workers
        self.val_size, self.split_seed = val_size, split_seed
        normalize = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        augmentation = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
        self.train_transform = transforms.Compose(augmentation + normalize)
        self.eval_transform = transforms.Compose(normalize)

    def prepare_data(self) -> None:
        CIFAR10(self.data_dir, train=True, download=True)
        CIFAR10(self.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        train_full = CIFAR10(self.data_dir, train=True, transform=self.train_transform)
        eval_full = CIFAR10(self.data_dir, train=True, transform=self.eval_transform)
        if not 0 < self.val_size < len(train_full):
            raise ValueError(f"val_size={self.val_size} must be between 1 and {len(train_full) - 1}")
        order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        self.val_set = Subset(eval_full, order[: self.val_size])  # same images, no augmentation
        self.train_set = Subset(train_full, order[self.val_size:])
        self.test_set = CIFAR10(self.data_dir, train=False, transform=self.eval_transform)

    def _loader(self, dataset, shuffle: bool = False) -> DataLoader:  # noqa: ANN001
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
