"""lit.py's model and data module in the `pytorch_lightning` namespace (`import pytorch_lightning as
pl`, as Lightning's docs taught before 2.0): the same steps (lit_steps.py), the same draws."""

from __future__ import annotations

import pytorch_lightning as pl

from tests.helpers.lit_steps import DigitsSteps, MLPSteps


class LitMLP(MLPSteps, pl.LightningModule):
    def __init__(self, hidden: int = 32, dropout: float = 0.3, lr: float = 0.01, step_sleep: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.build()


class LitDigits(DigitsSteps, pl.LightningDataModule):
    def __init__(self, batch_size: int = 32, num_workers: int = 1) -> None:
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
