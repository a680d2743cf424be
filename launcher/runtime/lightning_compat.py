"""The one door to Lightning's and torchmetrics' private internals.

Every use of an underscore attribute of Lightning (either namespace: `pytorch_lightning` with
`lightning_fabric`, or `lightning.pytorch` with `lightning.fabric`; lightning_api.py says which a
rank runs) or torchmetrics, and every subclass that overrides a private method of theirs, is here
and nowhere else in launch but its second door, lightning_step_compat.py (Lightning's per-step
Python, lightened), so that an upgrade breaks in places that can be listed. Importing
this module checks that the installed versions are the ones it was written for
(lightning_versions.py), and fails with one line when they are not.
"""

from __future__ import annotations

import csv
import os
import time
from typing import Any

from launcher.runtime.lightning_versions import IncompatibleVersions, check_versions, version_problem  # noqa: F401 (theirs)

check_versions()

# after the version check: a mismatch must be reported, not crash an import
import torch  # noqa: E402
from torchmetrics import Metric  # noqa: E402

from launcher.runtime.lightning_api import (  # noqa: E402
    CSVLogger,
    ModelCheckpoint,
    TQDMProgressBar,
    Trainer,
    fabric_module,
    module,
)
from launcher.runtime.lightning_step_compat import lighten_step_bookkeeping  # noqa: E402

_convert_params = fabric_module("utilities.logger")._convert_params
_flatten_dict = fabric_module("utilities.logger")._flatten_dict
ExperimentWriter = module("loggers.csv_logs").ExperimentWriter
rank_zero_experiment = module("loggers.logger").rank_zero_experiment
_update_dataloader = module("utilities.data")._update_dataloader

# --------------------------------------------------------------------------- the Trainer


def disable_lightning_signal_handling(trainer: Trainer) -> None:
    """Keep Lightning's own SIGTERM machinery out of the fit: launch owns the signals.

    Lightning would install its own SIGTERM handler at every fit, after on_fit_start, and it runs
    a broadcast inside the handler (a collective one rank can enter alone). Its flag can then
    never be set, yet its training loop broadcasts that flag from rank zero before every batch:
    a collective per step, for nothing; that broadcast goes too.
    """
    trainer._signal_connector.register_signal_handlers = lambda: None
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None
    lighten_step_bookkeeping()


def checkpoint_step_interval(checkpoint: Any) -> int:  # a ModelCheckpoint's every_n_train_steps (0: none)
    return int(checkpoint._every_n_train_steps or 0)


def accumulating(trainer: Trainer) -> bool:  # the batch that just ended only accumulated gradients
    return trainer.fit_loop.epoch_loop._should_accumulate()


def validation_follows(trainer: Trainer) -> bool:  # Lightning validates after the batch that just ended
    fit_loop = trainer.fit_loop
    return fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher)


def end_restart(trainer: Trainer) -> None:
    """Make the fit loop stop treating the current epoch as a restarted one (it would skip the
    epoch-interval LR scheduler step at the epoch's end); Lightning itself clears the flag only
    after that epoch."""
    trainer.fit_loop._restarting = False


def restored_epoch(checkpoint: dict[str, Any]) -> int | None:
    """The epoch the Trainer will be at once `checkpoint` is restored (its `current_epoch`), read
    before Lightning restores its loops (which comes after configure_optimizers may already have
    built the training loader)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None


def unwrapped_optimizer(optimizer: Any) -> Any:  # the torch optimizer inside a LightningOptimizer
    return getattr(optimizer, "_optimizer", optimizer)


def dump_checkpoint(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint `trainer.save_checkpoint` would write now (every rank runs the callbacks'
    on_save_checkpoint, which may gather), without writing it: `strategy.save_checkpoint` does."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def logged_steps(checkpoint: dict[str, Any]) -> int | None:
    """The logging step of the last training step `checkpoint` holds (Lightning's
    `_batches_that_stepped` when it was saved; the step the loggers wrote that step's rows at):
    a run resumed from it logs from the next one on."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError, ValueError):
        return None


def purge_tensorboard_from(logger: Any, step: int) -> None:
    """Hide, in TensorBoard, every event of earlier attempts at `step` or later: a SessionLog START
    at `step` (TensorBoard's own restart mechanism, what SummaryWriter(purge_step=) writes; its
    reader drops what came before it at that step or later). Written through the logger's writer,
    made now if it is not yet (rank zero)."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    logger.experiment._get_file_writer().add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))


def set_checkpoint_loader_states(checkpoint: dict[str, Any], states: list[Any]) -> None:
    """The stateful training loaders' states Lightning restores from `checkpoint` (its own save
    keeps rank zero's; each rank passes its own here, before the loops are restored)."""
    checkpoint.setdefault("loops", {}).setdefault("fit_loop", {}).setdefault("state_dict", {})["combined_loader"] = states


def train_dataloaders(trainer: Trainer) -> list[Any]:
    """The training DataLoaders of the current fit, as Lightning built them."""
    combined = trainer.fit_loop._combined_loader
    return list(combined.flattened) if combined is not None else []


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_cpu(v) for v in value]
    return value


def epoch_accumulators(trainer: Trainer) -> dict[str, Any]:
    """The running epoch sums behind `self.log(..., on_epoch=True)` for the training loop."""
    out = {}
    for key, result in trainer.fit_loop.epoch_loop._results.items():
        if getattr(result, "is_tensor", False) and result.meta.on_epoch:
            entry = {"value": _cpu(result.value)}
            if hasattr(result, "cumulated_batch_size"):
                entry["cumulated_batch_size"] = _cpu(result.cumulated_batch_size)
            entry["reduce"] = "max" if result.meta.is_max_reduction else "min" if result.meta.is_min_reduction else "sum"
            out[key] = entry
    return out


def add_epoch_accumulators(trainer: Trainer, saved: dict[str, Any]) -> None:
    """Fold the accumulators of the steps before a preemption into this attempt's."""
    results = trainer.fit_loop.epoch_loop._results
    for key, entry in saved.items():
        result = results.get(key)
        if result is None:
            continue
        value = entry["value"].to(result.value.device, result.value.dtype)
        if entry["reduce"] == "max":
            result.value = torch.maximum(result.value, value)
        elif entry["reduce"] == "min":
            result.value = torch.minimum(result.value, value)
        else:
            result.value = value + result.value
        if "cumulated_batch_size" in entry and hasattr(result, "cumulated_batch_size"):
            result.cumulated_batch_size = entry["cumulated_batch_size"].to(result.cumulated_batch_size.device) + \
                result.cumulated_batch_size


def with_sampler(dataloader: Any, sampler: Any, stage: Any) -> Any:  # a copy drawing from `sampler`, as Lightning makes it
    return _update_dataloader(dataloader, sampler, mode=stage)


# --------------------------------------------------------------------------- ModelCheckpoint
def model_checkpoint_saved(callback: Any) -> tuple[str, int]:
    """The file a ModelCheckpoint saved last, and the global step it saved it at."""
    return callback._last_checkpoint_saved, callback._last_global_step_saved


def record_model_checkpoint_link(callback: Any, filepath: str) -> None:
    """What ModelCheckpoint records of a save, for last.ckpt linked (runtime/model_checkpoint.py)."""
    callback._last_checkpoint_saved = filepath


def lightning_model_checkpoint_save(callback: Any, trainer: Trainer, filepath: str) -> None:
    ModelCheckpoint._save_checkpoint(callback, trainer, filepath)


# --------------------------------------------------------------------------- torchmetrics


def metric_state(metric: Metric) -> dict[str, Any]:
    """A Metric's accumulated state (not in state_dict: metric states are non-persistent)."""
    return {"state": {attr: _cpu(getattr(metric, attr)) for attr in metric._defaults},
            "update_count": metric._update_count}


def load_metric_state(metric: Metric, saved: dict[str, Any]) -> None:
    device = metric.device
    for attr, value in saved["state"].items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
        elif isinstance(value, list):
            value = [v.to(device) if isinstance(v, torch.Tensor) else v for v in value]
        setattr(metric, attr, value)
    metric._update_count = saved["update_count"]
    metric._computed = None


def merge_metric_state(metric: Metric, saved: dict[str, Any]) -> None:
    """Fold another rank's saved state into this Metric's, reduced as the Metric reduces its states
    across ranks (torchmetrics' merge_state)."""
    metric.merge_state({attr: value.to(metric.device) if isinstance(value, torch.Tensor) else value
                        for attr, value in saved["state"].items()})
    metric._update_count += saved["update_count"]
    metric._computed = None


# --------------------------------------------------------------------------- loggers and progress


def flatten_hparams(params: Any) -> dict[str, Any]:
    """Hyperparameters as Lightning's loggers flatten them (nested keys joined with '/')."""
    return _flatten_dict(_convert_params(params))


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

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        # Lightning's bar reads the metrics here, on rank zero alone, which computes the epoch's
        # synchronised values (collectives) there before the module's epoch-end hook: a collective
        # of the model's in that hook then meets these on the other ranks and the run hangs
        # (pytorch-lightning issue 21264). The epoch's values show at the next redraw, or the end.
        if self._leave:
            self.train_progress_bar.close()

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        if not self.train_progress_bar.disable:  # every rank has computed the last epoch's values
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
        super().on_train_end(trainer, pl_module)

    def _should_update(self, current: int, total: int) -> bool:
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._drawn_at >= self.every_s:
            self._drawn_at = now
            return True
        return False
