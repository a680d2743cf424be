"""The run's loggers: TensorBoard (with a real hp_metric) and a CSV that continues across restarts."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from launcher.rundir import atomic_write_text
from launcher.runtime.lightning_api import TensorBoardLogger, rank_zero_only
from launcher.runtime.lightning_compat import ContinuingCSVLogger, flatten_hparams, purge_tensorboard_from

__all__ = ["ContinuingCSVLogger", "LaunchTensorBoardLogger", "rewind_history"]


def rewind_history(loggers: list[Any], kept_step: int) -> int:
    """Drop what the loggers hold past `kept_step` (the checkpoint a run resumes from), so each
    step is in the history once: metrics.csv loses its later rows (rewritten atomically),
    TensorBoard hides the later events of earlier attempts. Returns the CSV rows dropped."""
    dropped = 0
    for logger in loggers:
        if isinstance(logger, ContinuingCSVLogger):
            dropped += _truncate_csv(os.path.join(logger.log_dir, "metrics.csv"), kept_step)
        elif isinstance(logger, TensorBoardLogger):
            purge_tensorboard_from(logger, kept_step + 1)
    return dropped


def _truncate_csv(path: str, kept_step: int) -> int:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        return 0
    if not rows or "step" not in rows[0]:
        return 0
    column = rows[0].index("step")
    kept = [rows[0]] + [r for r in rows[1:] if not (len(r) > column and r[column] and int(r[column]) > kept_step)]
    if len(kept) == len(rows):
        return 0
    out = io.StringIO()
    csv.writer(out).writerows(kept)  # "\r\n", as Lightning's writer ends its rows
    atomic_write_text(path, out.getvalue())
    return len(rows) - len(kept)


class LaunchTensorBoardLogger(TensorBoardLogger):
    """TensorBoardLogger whose HPARAMS entry is written once, at the end, with its metric.

    TensorBoard's HPARAMS tab shows a run's hyperparameters against the metrics named in the
    run's hparams summary; Lightning writes that summary at fit start, before any metric exists
    (with `default_hp_metric` a placeholder -1). Here the call at fit start only records the
    hyperparameters (hparams.yaml); `write_hparams(metrics)` writes the summary and the metric
    values together, so the tab shows the real hp_metric.
    """

    def log_hyperparams(self, params: Any, metrics: dict[str, Any] | None = None) -> None:
        if metrics is None:
            self._record_only(params)
        else:
            super().log_hyperparams(params, metrics)

    @rank_zero_only
    def _record_only(self, params: Any) -> None:
        self.hparams.update(flatten_hparams(params))
