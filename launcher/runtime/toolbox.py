"""The training toolbox the job file drives: optimizers and schedulers, early stopping, SWA,
profilers, and the extra logging (learning rate, gradient norms, histograms, hparams, loss curve).

Each piece is a stock Lightning or torch part configured from the resolved config; what launch
adds is only the glue that makes it work in one run directory, under DDP and across restarts.
"""

from __future__ import annotations

import csv
import types
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, StochasticWeightAveraging
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import grad_norm, rank_zero_only

from launcher.config import JobConfig, to_dict
from launcher.rundir import RunDir, atomic_open

# --------------------------------------------------------------------------- optimizers


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


# --------------------------------------------------------------------------- callbacks


class GradNormLogger(Callback):
    """Logs the 2-norm of every parameter's gradient and their total, before each optimizer step."""

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2), on_step=True, on_epoch=False)


class HistogramLogger(Callback):
    """TensorBoard histograms of every parameter at the end of each training epoch (rank zero)."""

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, param in pl_module.named_parameters():
                    logger.experiment.add_histogram(name, param.detach().float().cpu(), trainer.global_step)


def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'init_args': {'lr': 0.1}}} -> {'model.init_args.lr': 0.1}; lists become strings."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flat(value, name))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


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
        from lightning_fabric.utilities.logger import _convert_params, _flatten_dict

        self.hparams.update(_flatten_dict(_convert_params(params)))


class RunEnd(Callback):
    """At the end of fit (rank zero): the HPARAMS summary with hp_metric, and loss_curve.png."""

    def __init__(self, cfg: JobConfig, run: RunDir) -> None:
        self.cfg, self.run = cfg, run

    def hp_metric(self, trainer: Trainer) -> float | None:
        wanted = self.cfg.logging.hp_metric
        ckpt = trainer.checkpoint_callback
        if wanted is None and ckpt is not None and getattr(ckpt, "monitor", None) and ckpt.best_model_score is not None:
            return float(ckpt.best_model_score)
        value = trainer.callback_metrics.get(wanted or "val_loss")
        return float(value) if value is not None else None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        if self.cfg.logging.hparams:
            metric = self.hp_metric(trainer)
            params = {k: v for k, v in flat(to_dict(self.cfg)).items() if not k.startswith(("run.", "cluster."))}
            for logger in trainer.loggers:
                if isinstance(logger, LaunchTensorBoardLogger):
                    logger.log_hyperparams(params, {"hp_metric": metric if metric is not None else float("nan")})
                    logger.experiment.flush()
        if self.cfg.logging.loss_curve and (self.run.path / "metrics.csv").is_file():
            try:
                draw_loss_curve(self.run.path / "metrics.csv", self.run.path / "loss_curve.png")
            except Exception as exc:  # noqa: BLE001 - a missing picture must not fail a finished run
                print(f"launch: could not draw loss_curve.png: {exc}", flush=True)


def draw_loss_curve(metrics_csv: Path, out: Path) -> None:
    """Every loss-like column of metrics.csv against the step, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in (rows[0].keys() if rows else []) if "loss" in c]
    fig, ax = plt.subplots(figsize=(7, 4))
    for column in columns:
        points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
        if points:
            ax.plot(*zip(*points, strict=True), label=column, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(metrics_csv.parent.name)
    if columns:
        ax.legend()
    fig.tight_layout()
    with atomic_open(out) as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def callbacks(cfg: JobConfig, run: RunDir, has_loggers: bool) -> list[Callback]:
    found: list[Callback] = []
    es = cfg.early_stopping
    if es.monitor:
        found.append(EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta, mode=es.mode))
    if cfg.swa.swa_lrs is not None:
        found.append(StochasticWeightAveraging(swa_lrs=cfg.swa.swa_lrs, swa_epoch_start=cfg.swa.swa_epoch_start,
                                               annealing_epochs=cfg.swa.annealing_epochs,
                                               annealing_strategy=cfg.swa.annealing_strategy))
    if has_loggers and cfg.logging.log_lr:
        found.append(LearningRateMonitor())
    if cfg.logging.grad_norm:
        found.append(GradNormLogger())
    if cfg.logging.histograms and cfg.logging.tensorboard:
        found.append(HistogramLogger())
    found.append(RunEnd(cfg, run))
    return found


def profiler(cfg: JobConfig, run: RunDir) -> Any:
    """The Trainer's profiler, writing its report under the run directory's profiler/ folder."""
    name = cfg.trainer.profiler
    if name is None:
        return None
    from pytorch_lightning.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler

    cls = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}[name]
    return cls(dirpath=run.path / "profiler", filename="report")
