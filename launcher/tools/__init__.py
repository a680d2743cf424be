"""The one-device tools the CLI runs in the job's interpreter and directory: `launch tune`
(tune.py), `launch predict` (predict.py) and `launch export` (export.py). They build the job's
model and data as a rank does (runtime/build.py) but run outside any run's ranks. Like a rank, each
imports the job's code (and so chooses its Lightning) before anything that imports Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.config import JobConfig


def one_device_trainer(cfg: JobConfig, root: Path, **kwargs: Any) -> Any:
    """A plain Trainer on one device (GPU if the job asks for GPUs and there is one): tune, predict."""
    import torch

    from launcher.runtime.lightning_api import Trainer

    gpu = cfg.uses_gpus and torch.cuda.is_available()
    return Trainer(accelerator="gpu" if gpu else "cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      precision=cfg.trainer.precision, **kwargs)
