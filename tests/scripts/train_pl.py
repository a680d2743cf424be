"""train_lit.py in the `pytorch_lightning` namespace (`import pytorch_lightning as pl`), as many
projects written before Lightning 2.0 still read: launch runs it unchanged, on that Trainer."""

import argparse

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from tests.helpers.lit_pl import LitDigits, LitMLP


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()

    pl.seed_everything(11, workers=True)
    model = LitMLP(dropout=0.3, lr=args.lr)
    # its own progress bar, as many scripts set one up (launch keeps it and adds none of its own)
    trainer = pl.Trainer(max_epochs=args.epochs, log_every_n_steps=2, callbacks=[TQDMProgressBar(refresh_rate=5)])
    trainer.fit(model, datamodule=LitDigits(batch_size=32, num_workers=1))
    trainer.test(model, datamodule=trainer.datamodule, ckpt_path="best")


if __name__ == "__main__":
    main()
