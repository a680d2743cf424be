"""The job file's [optimizer] and [lr_scheduler]: stock torch parts in place of configure_optimizers."""

from __future__ import annotations

import types
from typing import Any

import torch

from launcher.config import JobConfig
from launcher.runtime.lightning_api import LightningModule, Trainer


def make_optimizer(cfg: JobConfig, params: Any) -> torch.optim.Optimizer:
    opt = cfg.optimizer
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                           nesterov=opt.nesterov)


def make_scheduler(cfg: JobConfig, optimizer: torch.optim.Optimizer, trainer: Trainer) -> dict[str, Any]:
    sch = cfg.lr_scheduler
    interval = "step" if sch.name == "onecycle" else sch.interval
    run_length = trainer.estimated_stepping_batches if interval == "step" else max(1, trainer.max_epochs or 1)
    monitor = None
    if sch.name == "step":
        scheduler: Any = torch.optim.lr_scheduler.StepLR(optimizer, step_size=sch.step_size, gamma=sch.gamma)
    elif sch.name == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(sch.t_max or run_length),
                                                               eta_min=sch.eta_min)
    elif sch.name == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=sch.max_lr or cfg.optimizer.lr,
                                                        total_steps=int(run_length), pct_start=sch.pct_start)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=sch.mode, factor=sch.factor,
                                                               patience=sch.patience)
        monitor = sch.monitor
    config = {"scheduler": scheduler, "interval": interval, "frequency": 1, "name": "lr"}
    if monitor:
        config["monitor"] = monitor
    return config


def install_optimizer(model: LightningModule, cfg: JobConfig) -> None:
    """Replace the model's configure_optimizers with the job file's [optimizer] / [lr_scheduler]."""
    if cfg.optimizer.name is None:
        return

    def configure_optimizers(self: LightningModule) -> Any:
        optimizer = make_optimizer(cfg, [p for p in self.parameters() if p.requires_grad])
        if cfg.lr_scheduler.name is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": make_scheduler(cfg, optimizer, self.trainer)}

    model.configure_optimizers = types.MethodType(configure_optimizers, model)
