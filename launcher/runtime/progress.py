"""`progress.json`: where a run is, for `launch status`, kept current by rank zero."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from launcher.lifecycle import Event
from launcher.rundir import RunDir, replace_view
from launcher.runtime.lightning_api import Callback, LightningModule, Trainer


class RunProgress(Callback):
    """Rank zero keeps `progress.json` current (step, epoch, metrics) for `launch status`.

    Every step hands the position to a writer thread, which replaces the file as fast as it can
    (at most 20 times a second), so the file trails the run by one write, not by a fixed interval,
    and the training loop never waits on the filesystem. The metrics are read only every
    `metrics_every_s`, after an epoch and at the end of a validation: reading them copies device
    tensors to the host, which waits for the accelerator. Rank zero never reads them where that
    would compute synchronised values (a collective) that the other ranks compute later.
    """

    MIN_WRITE_GAP_S = 0.05

    def __init__(self, run: RunDir, metrics_every_s: float = 1.0) -> None:
        self.run, self.metrics_every_s = run, metrics_every_s
        self._metrics: dict[str, float] = {}
        self._metrics_at = 0.0
        self._first_step_seen = False
        self._epoch_ended = False  # an epoch ended: write its metrics at the next epoch's start
        self._latest: tuple[int, dict[str, Any]] | None = None  # (sequence, record), replaced whole
        self._written = 0  # sequence of the record on disk
        self._seq = 0
        self._lock = threading.Lock()  # one write at a time, never an older record over a newer one
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def record(self, trainer: Trainer, stage: str, with_metrics: bool) -> tuple[int, dict[str, Any]]:
        if with_metrics:
            self._metrics = {}
            for key, value in trainer.callback_metrics.items():
                try:
                    self._metrics[key] = float(value)
                except (TypeError, ValueError):
                    continue
            self._metrics_at = time.monotonic()
        self._seq += 1
        return self._seq, {
            "stage": stage,
            "global_step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "metrics": dict(self._metrics),
            "world_size": int(trainer.world_size),
            "time": time.time(),
            "pid": os.getpid(),
        }

    def write(self, trainer: Trainer, stage: str) -> None:
        """Write now, with fresh metrics (the end of an epoch, a validation, the run)."""
        if trainer.global_rank == 0:
            self._write(self.record(trainer, stage, with_metrics=True))

    def publish(self, trainer: Trainer, stage: str) -> None:
        """Hand the writer thread the newest position; returns at once."""
        if trainer.global_rank != 0:
            return
        self._latest = self.record(trainer, stage, time.monotonic() - self._metrics_at >= self.metrics_every_s)
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="launch-progress", daemon=True)
            self._thread.start()
        self._wake.set()

    def _writer(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            if self._latest is not None:
                self._write(self._latest)
            time.sleep(self.MIN_WRITE_GAP_S)

    def _write(self, item: tuple[int, dict[str, Any]]) -> None:
        seq, record = item
        with self._lock:
            if seq <= self._written:
                return
            try:
                replace_view(self.run.progress, json.dumps(record, indent=1).encode())
                self._written = seq
            except OSError:
                pass  # a status view may lag (a full disk); training must not stop for it

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join(timeout=5)
            self._thread, self._stop = None, False

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not self._first_step_seen:
            self._first_step_seen = True
            if trainer.global_rank == 0:  # start-up cost of this attempt: `started` to here (bench/)
                self.run.add_event(Event.FIRST_STEP, global_step=int(trainer.global_step), t=round(time.time(), 3))
        self.publish(trainer, "fit")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Not written here: reading the metrics now would compute the epoch's values, whose
        # synchronisation is a collective, on rank zero alone and before the module's own epoch-end
        # hook; its collectives would then meet other ones on the other ranks (a model's all_gather
        # there hung). Lightning computes them on every rank after the epoch-end hooks.
        self._epoch_ended = True

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_ended:  # the last epoch's values, computed by now (the run's end: on_fit_end)
            self._epoch_ended = False
            self.write(trainer, "fit")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.write(trainer, "fit" if trainer.state.fn == "fit" else "validate")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, "fit-done")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, "test-done")
