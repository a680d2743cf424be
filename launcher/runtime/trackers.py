"""W&B and MLflow ([logging.wandb], [logging.mlflow]): rank zero logs to ONE run of each across
every attempt of a launch run (requeue, restart, `launch resume`).

Each tracker's run id is kept in the run directory (`loggers/<tracker>.json`) with the last step
sent to it and the keys sent at that step. A later attempt reuses the id and does not send those
rows again: after a hard crash the steps since the newest checkpoint are trained again (bit for
bit), and their rows are already in the tracker. Steps are the trainer's global step, as in
TensorBoard and metrics.csv (W&B's own `_step` is set to it).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.config import JobConfig
from launcher.rundir import RunDir, atomic_write_text
from launcher.runtime.lightning_api import rank_zero_only


class TrackerRecord:
    """`loggers/<tracker>.json`: the tracker's run id, and what earlier attempts sent (rank zero only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}
        # What this attempt must not send again: fixed when the attempt starts.
        self.sent_step: int = self.data.get("last_step", -1)
        self.sent_keys: set[str] = set(self.data.get("keys_at_last_step", ()))

    @property
    def run_id(self) -> str | None:
        return self.data.get("run_id")

    def keep_run_id(self, run_id: str) -> None:
        self.data["run_id"] = run_id
        self._write()

    def already_sent(self, step: int, keys: Mapping[str, Any]) -> bool:
        return step < self.sent_step or (step == self.sent_step and set(keys) <= self.sent_keys)

    def sent(self, step: int, keys: Mapping[str, Any]) -> None:
        if step == self.data.get("last_step"):
            self.data["keys_at_last_step"] = sorted(set(self.data["keys_at_last_step"]) | set(keys))
        else:
            self.data["last_step"], self.data["keys_at_last_step"] = step, sorted(keys)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.data))


def from_job_file(cfg: JobConfig, run: RunDir) -> list[Any]:
    """The trackers the job file asks for (their packages are imported only then)."""
    out: list[Any] = []
    if cfg.logging.wandb is not None:
        out.append(_wandb(cfg, run))
    if cfg.logging.mlflow is not None:
        out.append(_mlflow(cfg, run))
    return out


def _wandb(cfg: JobConfig, run: RunDir) -> Any:
    from launcher.runtime.lightning_api import module

    WandbLogger = module("loggers").WandbLogger

    class ContinuingWandbLogger(WandbLogger):
        """One W&B run (fixed id, resume="allow"); W&B's step is the global step; nothing sent twice."""

        def __init__(self, record: TrackerRecord, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.record = record

        @rank_zero_only
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            if step is None:
                self.experiment.log(dict(metrics))
                return
            if self.record.already_sent(step, metrics):
                return
            self.experiment.log(dict(metrics, **{"trainer/global_step": step}), step=step)
            self.record.sent(step, metrics)

    wb = cfg.logging.wandb
    assert wb is not None
    record = TrackerRecord(run.tracker_record("wandb"))
    run_id = None
    if rank_zero_only.rank == 0:
        run_id = record.run_id
        if run_id is None:
            run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters of [a-z0-9]
            record.keep_run_id(run_id)
        run.wandb.mkdir(parents=True, exist_ok=True)
    extra = {} if os.environ.get("WANDB_MODE") else {"mode": wb.mode}
    return ContinuingWandbLogger(record, project=wb.project, entity=wb.entity, name=wb.name or cfg.job.name,
                                 tags=list(wb.tags) or None, id=run_id, save_dir=str(run.wandb), **extra)


def _mlflow(cfg: JobConfig, run: RunDir) -> Any:
    from launcher.runtime.lightning_api import module

    MLFlowLogger = module("loggers").MLFlowLogger

    class ContinuingMLFlowLogger(MLFlowLogger):
        """One MLflow run: created by the first attempt, its id kept; later attempts log to it."""

        def __init__(self, record: TrackerRecord, **kwargs: Any) -> None:
            super().__init__(run_id=record.run_id, **kwargs)
            self.record = record
            self.opened = False

        def open(self) -> None:
            """Rank zero's first call: keep a new run's id, or mark a reopened run as running again."""
            if self.opened:
                return
            self.opened = True
            run_id = self.run_id  # creates the run on the first attempt
            if self.record.run_id is None:
                self.record.keep_run_id(run_id)
            else:
                self.experiment.update_run(run_id, status="RUNNING")  # an earlier attempt ended it

        @rank_zero_only
        def log_hyperparams(self, params: Any) -> None:
            self.open()
            super().log_hyperparams(params)

        @rank_zero_only
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            self.open()
            if step is not None and self.record.already_sent(step, metrics):
                return
            super().log_metrics(metrics, step)
            if step is not None:
                self.record.sent(step, metrics)

    ml = cfg.logging.mlflow
    assert ml is not None
    record = TrackerRecord(run.tracker_record("mlflow")) if rank_zero_only.rank == 0 else TrackerRecord(Path(os.devnull))
    uri = ml.tracking_uri or run.mlruns.resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked: it is what [logging.mlflow] writes by default
        # (no database server, everything in the run directory), so launch asks for it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return ContinuingMLFlowLogger(record, experiment_name=ml.experiment or cfg.job.name, tracking_uri=uri,
                                  run_name=cfg.run.id)
