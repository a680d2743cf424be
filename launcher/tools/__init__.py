"""The one-device tools the CLI runs in the job's interpreter and directory: `launch tune`
(tune.py), `launch predict` (predict.py) and `launch export` (export.py). They build the job's
model and data as a rank does (runtime/build.py) but run outside any run's ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.config import JobConfig


def one_device_trainer(cfg: JobConfig, root: Path, **kwargs: Any) -> Any:
    """A plain Trainer on one device (GPU if the job asks for GPUs and there is one): tune, predict."""
    import pytorch_lightning as pl
    import torch

    gpu = cfg.uses_gpus and torch.cuda.is_available()
    return pl.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      precision=cfg.trainer.precision, **kwargs)
