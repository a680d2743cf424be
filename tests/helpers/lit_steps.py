"""The steps of tests/helpers/lit.py's model and data module, without Lightning: mixins that the
`lightning.pytorch` classes (lit.py) and the `pytorch_lightning` ones (lit_pl.py) share, so that
both namespaces train the same thing, draw for draw."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy


class MLPSteps:
    """Dropout, noise drawn every step, a stepped LR schedule, an exact metric; `step_sleep` seconds
    a step leaves time to preempt it mid-epoch. (`build` after save_hyperparameters.)"""

    def build(self) -> None:
        hidden, dropout = self.hparams.hidden, self.hparams.dropout
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10))
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # noqa: ANN001
        if self.hparams.step_sleep:
            time.sleep(self.hparams.step_sleep)
        x, y = batch
        loss = F.cross_entropy(self.net(x), y) + 0 * torch.randn(())
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        x, y = batch
        logits = self.net(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        x, y = batch
        self.log("test_loss", F.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):  # noqa: ANN201
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DigitsSteps:
    """scikit-learn's digits, jittered at random in the loader's worker (randomness in the data)."""

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target)
        self.train_set = Jittered(images[:1437], labels[:1437])
        self.val_set = TensorDataset(images[1437:], labels[1437:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class Jittered(TensorDataset):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = super().__getitem__(index)
        return image + 0.05 * torch.randn_like(image), label
