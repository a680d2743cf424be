"""MNIST through torchvision: `prepare_data` downloads (once per job, or once per node)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms
from torchvision.datasets import MNIST

from datamodules import pl

MEAN, STD = 0.1307, 0.3081


class InMemoryImages(Dataset):
    """Images and labels as two tensors (on the training device if asked), fetched a batch at a
    time: the DataLoader calls `__getitems__` with a whole batch of indices, so a batch is one
    index operation instead of a Python call and a collate per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, device=self.labels.device)
        return self.images[idx], self.labels[idx]


def _batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


class MNISTDataModule(pl.LightningDataModule):
    """`in_memory=True`: the decoded dataset (about 200 MB as float32) is kept as tensors on the
    training device and batches are gathered there, with no worker processes; for data that fits
    in memory, that removes the per-sample transform and the host-to-device copy."""

    def __init__(self, data_dir: str = "data", batch_size: int = 128, val_size: int = 5000, num_workers: int = 2,
                 split_seed: int = 0, in_memory: bool = False) -> None:
        super().__init__()
        self.data_dir, self.batch_size, self.num_workers = data_dir, batch_size, num_workers
        self.in_memory = in_memory
        self.val_size, self.split_seed = val_size, split_seed
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])

    def prepare_data(self) -> None:
        MNIST(self.data_dir, train=True, download=True)
        MNIST(self.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        full = MNIST(self.data_dir, train=True, transform=self.transform)
        test = MNIST(self.data_dir, train=False, transform=self.transform)
        if not 0 < self.val_size < len(full):
            raise ValueError(f"val_size={self.val_size} must be between 1 and {len(full) - 1}")
        if self.in_memory:
            full, test = self._in_memory(full), self._in_memory(test)
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        self.val_set = Subset(full, order[: self.val_size])
        self.train_set = Subset(full, order[self.val_size:])
        self.test_set = test

    def _in_memory(self, dataset: MNIST) -> InMemoryImages:
        """The same values the transform gives (ToTensor, then Normalize), computed once for all."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        images = ((dataset.data.to(device, torch.float32) / 255.0 - MEAN) / STD).unsqueeze(1)
        return InMemoryImages(images, dataset.targets.to(device))

    def _loader(self, dataset, shuffle: bool = False) -> DataLoader:  # noqa: ANN001
        if self.in_memory:
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, collate_fn=_batch_as_is)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
