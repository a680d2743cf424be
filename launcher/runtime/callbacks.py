"""Callbacks the job file turns on: early stopping, SWA, learning rate, gradient norms, histograms,
the HPARAMS summary with hp_metric and the loss curve at the end; and the profiler."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from torch.distributed.tensor import DTensor

from launcher.config import JobConfig, to_dict
from launcher.rundir import RunDir, atomic_open
from launcher.runtime.lightning_api import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    LightningModule,
    StochasticWeightAveraging,
    TensorBoardLogger,
    Trainer,
    grad_norm,
)
from launcher.runtime.loggers import LaunchTensorBoardLogger


class GradNormLogger(Callback):
    """Logs the 2-norm of every parameter's gradient and their total, before each optimizer step."""

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2), on_step=True, on_epoch=False)


class HistogramLogger(Callback):
    """TensorBoard histograms of every parameter at the end of each training epoch, written by rank
    zero. A sharded parameter (FSDP's DTensor, whose shard TensorBoard cannot read) is gathered
    whole first, one at a time, by every rank: a collective, in the same order on each."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not writers:
            return
        for name, param in pl_module.named_parameters():
            value = param.detach()
            if isinstance(value, DTensor):
                value = value.full_tensor()
            if trainer.global_rank == 0:
                for writer in writers:
                    writer.add_histogram(name, value.float().cpu(), trainer.global_step)


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
        if self.cfg.logging.loss_curve and self.run.metrics_csv.is_file():
            try:
                draw_loss_curve(self.run.metrics_csv, self.run.loss_curve)
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


def from_job_file(cfg: JobConfig, run: RunDir, has_loggers: bool) -> list[Callback]:
    """The callbacks the job file turns on ([early_stopping], [swa], [logging]), and RunEnd."""
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
    from launcher.runtime.lightning_api import module

    profilers = module("profilers")
    AdvancedProfiler, PyTorchProfiler, SimpleProfiler = (profilers.AdvancedProfiler, profilers.PyTorchProfiler,
                                                          profilers.SimpleProfiler)

    cls = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}[name]
    return cls(dirpath=run.profiler, filename="report")
