"""The Lightning pieces the runtime plugs into every Trainer."""

from __future__ import annotations

import csv
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, DistributedSampler

from launcher.rundir import RunDir, atomic_open
from launcher.runtime.preemption import ResumableDistributedSampler

_EVAL_STAGES = (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)


class LaunchDDPStrategy(DDPStrategy):
    """DDP with evaluation metrics that equal the single-process value exactly.

    Two things in stock Lightning make distributed evaluation inexact:
    - the evaluation DistributedSampler pads the last round by repeating samples, so those are
      counted twice when the dataset size is not divisible by the world size;
    - a `sync_dist` epoch mean divides an int64 batch-size sum by the world size in place,
      which floors it (3 and 2 samples per rank: 5 / 2 -> 2, and a constant 1.0 logs as 1.25).
    """

    strategy_name = "launch_ddp"

    def process_dataloader(self, dataloader: object) -> object:
        trainer = self.lightning_module.trainer
        stage = trainer.state.stage
        # Only the DistributedSampler Lightning itself added is replaced; a user's own is kept.
        if isinstance(dataloader, DataLoader) and type(dataloader.sampler) is DistributedSampler:
            old = dataloader.sampler
            if stage in _EVAL_STAGES:
                sampler = UnrepeatedDistributedSampler(old.dataset, num_replicas=old.num_replicas, rank=old.rank,
                                                       shuffle=False)
                dataloader = _update_dataloader(dataloader, sampler, mode=stage)
            elif stage == RunningStage.TRAINING:
                sampler = ResumableDistributedSampler(old.dataset, num_replicas=old.num_replicas, rank=old.rank,
                                                      shuffle=old.shuffle, seed=old.seed, drop_last=old.drop_last)
                dataloader = _update_dataloader(dataloader, sampler, mode=stage)
                dataloader.generator = sampler.loader_generator = torch.Generator()
        return super().process_dataloader(dataloader)

    def reduce(self, tensor: Any, group: Any = None, reduce_op: Any = "mean") -> Any:
        if (
            isinstance(tensor, torch.Tensor)
            and not torch.is_floating_point(tensor)
            and isinstance(reduce_op, str)
            and reduce_op.lower() in ("mean", "avg")
        ):
            tensor = tensor.double()
        return super().reduce(tensor, group=group, reduce_op=reduce_op)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint is written to a temp file, fsynced and renamed into place.

    A kill or a full disk while saving leaves the previous checkpoint at that path intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = None
        try:
            with atomic_open(path) as fh:
                writer = _ErrorKeepingWriter(fh)
                torch.save(checkpoint, writer)
        except Exception as exc:
            # torch reports a failed write as "unexpected pos"; the OSError underneath says why
            cause = writer.error if writer is not None and writer.error is not None else exc
            if not isinstance(cause, OSError) or cause.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise OSError(cause.errno, f"{os.strerror(cause.errno)} while writing checkpoint {path.name}; nothing "
                          f"was replaced: the previous checkpoints in {path.parent} are intact") from exc


class _ErrorKeepingWriter:
    """A file for torch.save that remembers the first OSError of a write (torch replaces it)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


class TimedProgressBar(TQDMProgressBar):
    """The progress bar, redrawn at most every `every_s` seconds instead of every N batches.

    Drawing runs on rank zero only, and in DDP every millisecond rank zero spends there is
    waited for by the others at the next gradient all-reduce; a time-based refresh keeps that
    cost constant however fast the steps are.
    """

    def __init__(self, every_s: float = 0.5) -> None:
        super().__init__(refresh_rate=1)
        self.every_s = every_s
        self._drawn_at = 0.0

    def _should_update(self, current: int, total: int) -> bool:
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._drawn_at >= self.every_s:
            self._drawn_at = now
            return True
        return False


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
                self.run.add_event("first_step", global_step=int(trainer.global_step), t=round(time.time(), 3))
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


class ContinuingCSVLogger(CSVLogger):
    """CSVLogger that continues `metrics.csv` across restarts of the same run.

    Lightning's writer starts with no known columns, so its first save after a restart rewrites
    the file with only the new columns and drops the rows already there.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = next(csv.reader(fh), [])

    def _check_log_dir_exists(self) -> None:
        pass  # a restart continues the run in the same directory: nothing to warn about
