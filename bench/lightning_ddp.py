"""The second baseline: the same model and data in a plain Lightning Trainer (DDP over gloo,
Lightning's defaults: progress bar, TensorBoard logger, checkpointing), without launch. Between the
hand-written loop and launch, it says which share of a gap is Lightning's own and which is launch's.

    torchrun --nproc-per-node P bench/lightning_ddp.py STEPS TIMINGS_JSON ROOT_DIR [MODEL_CLASS]

MODEL_CLASS: a class of bench/common.py (TimedCNN unless given; bench/epoch_end.py's timers).
"""

from __future__ import annotations

import os
import sys

import pytorch_lightning as pl

sys.path.insert(0, os.getcwd())
from bench import common  # noqa: E402


def main() -> None:
    steps, out, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    pl.seed_everything(0)
    trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LOCAL_WORLD_SIZE"]), strategy="ddp",
                         max_steps=steps, default_root_dir=root, limit_val_batches=0, num_sanity_val_steps=0)
    model = getattr(common, sys.argv[4] if len(sys.argv) > 4 else "TimedCNN")(timings=out)
    trainer.fit(model, datamodule=common.SyntheticDataModule())


if __name__ == "__main__":
    main()
