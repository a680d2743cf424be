"""`progress.json`: where a run is, for `launch status`, kept current by rank zero."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer

from launcher.lifecycle import Event
from launcher.rundir import RunDir, atomic_open


class RunProgress(Callback):
    """Rank zero keeps `progress.json` current (step, epoch, metrics) for `launch status`."""

    def __init__(self, run: RunDir, every_s: float = 1.0) -> None:
        self.run, self.every_s = run, every_s
        self._last = 0.0
        self._first_step_seen = False

    def write(self, trainer: Trainer, stage: str) -> None:
        if trainer.global_rank != 0:
            return
        metrics = {}
        for key, value in trainer.callback_metrics.items():
            try:
                metrics[key] = float(value)
            except (TypeError, ValueError):
                continue
        record = {
            "stage": stage,
            "global_step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "metrics": metrics,
            "world_size": int(trainer.world_size),
            "time": time.time(),
            "pid": os.getpid(),
        }
        self._last = time.monotonic()
        try:
            with atomic_open(self.run.progress) as fh:
                fh.write(json.dumps(record, indent=1).encode())
        except OSError:
            pass  # a status view may lag (a full disk); training must not stop for it

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not self._first_step_seen:
            self._first_step_seen = True
            if trainer.global_rank == 0:  # start-up cost of this attempt: `started` to here (bench/)
                self.run.add_event(Event.FIRST_STEP, global_step=int(trainer.global_step), t=round(time.time(), 3))
        if time.monotonic() - self._last >= self.every_s:
            self.write(trainer, "fit")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, "fit")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.write(trainer, "fit" if trainer.state.fn == "fit" else "validate")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, "fit-done")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, "test-done")
