"""The start-up baseline: the digits job's model and data in a plain Lightning script, as a user
would write it without launch (run under torchrun by bench/startup.py).

    torchrun --standalone --nproc-per-node 2 bench/plain_lightning.py DATA_DIR ROOT_DIR
"""

from __future__ import annotations

import os
import sys

import pytorch_lightning as pl

sys.path.insert(0, os.getcwd())
from datamodules.digits import DigitsDataModule  # noqa: E402
from models.mlp import MLP  # noqa: E402


def main() -> None:
    data_dir, root = sys.argv[1], sys.argv[2]
    pl.seed_everything(42, workers=True)
    model = MLP(in_features=64, hidden=128, dropout=0.1, lr=0.01)  # jobs/digits.toml's model and data
    data = DigitsDataModule(data_dir=data_dir, batch_size=32)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, log_every_n_steps=5,
                         default_root_dir=root, enable_progress_bar=False)
    trainer.fit(model, datamodule=data)


if __name__ == "__main__":
    main()
