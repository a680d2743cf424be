"""A plain Lightning script, written as a user writes one (`python train_lit.py --epochs 3`):
launch runs it unchanged (`launch submit tests/scripts/train_lit.py -- --epochs 3`)."""

import argparse

import lightning as L

from tests.helpers.lit import LitDigits, LitMLP


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds a training step sleeps")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-fit", action="store_true", help="build everything, then forget to train")
    args = parser.parse_args()

    L.seed_everything(args.seed, workers=True)
    model = LitMLP(dropout=0.3, step_sleep=args.sleep)
    data = LitDigits(batch_size=32, num_workers=1)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, log_every_n_steps=2,
                        enable_progress_bar=False)
    if args.no_fit:
        return
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, ckpt_path="best")


if __name__ == "__main__":
    main()
