"""A plain LightningModule for classification; the example models only supply the network."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from models import pl


class Classifier(pl.LightningModule):
    """Cross-entropy training with exact, synchronised accuracy (torchmetrics) and AdamW."""

    # The per-step training loss is each rank's own (rank zero's is what gets logged): averaging
    # it over ranks is an all-reduce every step, which cost about a fifth of the throughput of 2
    # CPU processes (bench/README.md). The epoch value is always averaged over every sample of
    # every rank, exactly, with one reduction at the epoch end. True: average every step too.
    sync_step_loss = False

    def __init__(self, net: nn.Module, num_classes: int, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.net = net
        self.lr, self.weight_decay = lr, weight_decay
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        if stage == "train":
            self.log("train_loss_step", loss, on_step=True, on_epoch=False, sync_dist=self.sync_step_loss,
                     prog_bar=True)
            self.log("train_loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))
        else:
            self.log(f"{stage}_loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y), prog_bar=stage != "test")
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
