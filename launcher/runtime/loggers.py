"""The run's loggers: TensorBoard (with a real hp_metric) and a CSV that continues across restarts."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from launcher.runtime.lightning_compat import ContinuingCSVLogger, flatten_hparams

__all__ = ["ContinuingCSVLogger", "LaunchTensorBoardLogger"]


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
