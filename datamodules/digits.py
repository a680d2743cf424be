"""scikit-learn's 8x8 handwritten digits: 1,797 real images shipped inside the package.

No download, so the first job works offline. `prepare_data` still does real work once (it
writes the tensors to `data_dir`), so the once-per-job / once-per-node contract is exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules import pl


class DigitsDataModule(pl.LightningDataModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 64, val_size: int = 180, test_size: int = 180,
                 num_workers: int = 0, split_seed: int = 0) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed

    @property
    def file(self) -> Path:
        return self.data_dir / "digits" / "digits.npz"

    def prepare_data(self) -> None:
        if self.file.exists():
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=digits.images.astype(np.float32) / 16.0, labels=digits.target.astype(np.int64))
        os.replace(tmp, self.file)  # other nodes' readers never see half a file

    def setup(self, stage: str | None = None) -> None:
        with np.load(self.file) as data:
            images = torch.from_numpy(data["images"]).unsqueeze(1)  # N x 1 x 8 x 8
            labels = torch.from_numpy(data["labels"])
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        n_test, n_val = self.test_size, self.val_size
        if n_test + n_val >= len(labels):
            raise ValueError(f"val_size + test_size = {n_test + n_val} leaves no training data of {len(labels)}")
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(images[test], labels[test])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size, num_workers=self.num_workers)
