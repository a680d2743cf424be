"""`progress.json`, what `launch status` shows of a running run: current to within one write.

In process: a real Trainer on CPU with the callback the runs use, and a model that reads the file
while it trains.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from launcher.rundir import RunDir
from launcher.runtime.progress import RunProgress
from models.mlp import MLP


class Watching(MLP):
    """Each step waits a little, as a real step computes, then notes the step the file shows."""

    def __init__(self, run: RunDir) -> None:
        super().__init__(in_features=8, hidden=8, num_classes=2, dropout=0.0)
        self.run, self.seen = run, []

    def training_step(self, batch, batch_idx: int):  # noqa: ANN001, ANN201
        time.sleep(0.15)
        self.seen.append((int(self.trainer.global_step), self.run.read_progress().get("global_step")))
        return super().training_step(batch, batch_idx)


def test_progress_trails_the_run_by_at_most_one_step_and_the_writer_stops_with_fit(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "job")
    model = Watching(run)
    data = TensorDataset(torch.randn(96, 8), torch.randint(0, 2, (96,)))
    trainer = pl.Trainer(accelerator="cpu", max_steps=24, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[RunProgress(run)])
    trainer.fit(model, DataLoader(data, batch_size=8))
    # Step s starts after step s-1's end handed its position over 0.15 s earlier: the file shows it.
    lags = [step - shown for step, shown in model.seen[1:]]
    assert len(lags) == 23 and max(lags) == 0, model.seen
    final = run.read_progress()
    assert (final["stage"], final["global_step"], final["epoch"]) == ("fit-done", 24, 2), final
    assert set(final["metrics"]) == {"train_loss_step", "train_loss_epoch", "train_acc"}, final
    assert not [t for t in threading.enumerate() if t.name == "launch-progress"], "the writer outlived fit"
    assert not list(run.path.glob(".progress.json.tmp-*")), "a temp file was left behind"
