"""Written the way Lightning's docs teach since 2.0 (`import lightning as L`), not launch's way: a
user's own model and data module, in the `lightning.pytorch` namespace (their steps: lit_steps.py,
shared with lit_pl.py's `pytorch_lightning` twins)."""

from __future__ import annotations

import lightning as L

from tests.helpers.lit_steps import DigitsSteps, MLPSteps


class LitMLP(MLPSteps, L.LightningModule):
    def __init__(self, hidden: int = 32, dropout: float = 0.3, lr: float = 0.01, step_sleep: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.build()


class LitDigits(DigitsSteps, L.LightningDataModule):
    def __init__(self, batch_size: int = 32, num_workers: int = 1) -> None:
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
