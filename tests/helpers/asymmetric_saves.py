"""Run by torchrun (tests/test_model_checkpoint.py): a 3-rank DDP fit whose rank zero alone has a
callback with its own on_save_checkpoint, with launch's ModelCheckpoint.

    torchrun --nproc-per-node 3 tests/helpers/asymmetric_saves.py ROOT OUT_JSON
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.getcwd())
from launcher.runtime.lightning_api import Callback, LightningModule, Trainer  # noqa: E402
from launcher.runtime.model_checkpoint import LaunchModelCheckpoint  # noqa: E402
from launcher.runtime.rank import close_process_group  # noqa: E402
from tests.helpers.modules import last_ckpt_linked  # noqa: E402


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RankZeroNote(Callback):
    """Only rank zero has it: its saves carry a note the other ranks know nothing of."""

    def __init__(self, dirpath: Path) -> None:
        self.dirpath, self.seen = dirpath, []

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["note"] = len(self.seen)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if (self.dirpath / "last.ckpt").exists():
            last = torch.load(self.dirpath / "last.ckpt", map_location="cpu", weights_only=False)
            self.seen.append([last_ckpt_linked(self.dirpath), "note" in last])


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 4), torch.randn(48, 1))
    dirpath = root / "checkpoints"
    callbacks: list[Any] = [LaunchModelCheckpoint(dirpath=dirpath, save_last=True, save_top_k=1)]
    note = RankZeroNote(dirpath)
    if int(os.environ["RANK"]) == 0:
        callbacks.append(note)
    trainer = Trainer(accelerator="cpu", devices=3, strategy="ddp", max_epochs=3, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, callbacks=callbacks)
    trainer.fit(Tiny(), DataLoader(data, batch_size=8))
    if trainer.is_global_zero:
        out.write_text(json.dumps(note.seen))
    close_process_group()  # as a launch rank does: left to exit, gloo's threads may abort the process


if __name__ == "__main__":
    main()
