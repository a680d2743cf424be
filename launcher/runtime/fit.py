"""A rank's training run: fit (resuming from the newest checkpoint), then test, then the record."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from launcher.checkpoint_interval import AutoInterval
from launcher.config import JobConfig
from launcher.lifecycle import Event
from launcher.records import Preemption
from launcher.rundir import RunDir, checkpoint_complete, checkpoint_mtime_ns, remove_checkpoint
from launcher.runtime import cpython_compat, output, signals
from launcher.runtime.build import build_model_and_data, build_trainer
from launcher.runtime.heartbeat import finish_heartbeat
from launcher.runtime.lightning_api import FABRIC, NAME, is_overridden, loaded
from launcher.runtime.loggers import rewind_history
from launcher.runtime.preemption import Preempted, PreemptionHandler
from launcher.runtime.strategy import guard_evaluation_logging


def once_per_job(obj: Any, method: str) -> None:
    """Make `obj.method` run at most once in this process (later calls do nothing)."""
    original = getattr(obj, method)
    done = False

    def run_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        if done:
            return None
        done = True
        return original(*args, **kwargs)

    setattr(obj, method, run_once)


def find_resume_checkpoint(run: RunDir) -> Path | None:
    """The newest of launch's full-state checkpoints (preemption, periodic), which resume bit for
    bit; without either, the newest of the others (ModelCheckpoint's, at epoch and validation
    ends; last.ckpt). Writes are atomic: a visible file is whole, a sharded one counts when complete."""
    candidates = run.full_state_checkpoints() or [p for p in run.checkpoints.glob("*.ckpt")
                                                  if not p.name.startswith(".") and checkpoint_complete(p)]
    return max(candidates, key=checkpoint_mtime_ns, default=None)


def train(cfg: JobConfig, run: RunDir, rank: int) -> None:
    """A job file's rank: its model and data, launch's Trainer, fit, test, the record."""
    quiet_lightning_advice()
    model, datamodule = build_model_and_data(cfg)
    session = FitSession(cfg, run, rank)
    trainer = build_trainer(cfg, run, session.callbacks)
    if not session.fit(trainer, model, datamodule=datamodule):
        return  # preempted and saved
    # the end-of-fit metrics (test replaces callback_metrics with its own): both are reported
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.job.test_after_fit and is_overridden("test_dataloader", datamodule) and not trainer.interrupted:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if best else None, weights_only=False)
    session.finish(trainer, metrics)


def quiet_lightning_advice() -> None:
    output.route_logging(NAME, FABRIC)
    # LaunchDDPStrategy evaluates every sample exactly once, so Lightning's advice is moot.
    warnings.filterwarnings("ignore", message=r".*Using `DistributedSampler` with the dataloaders")
    # launch resumes the data position itself (runtime/samplers.py), exactly: Lightning's warning
    # that a mid-epoch resume of a plain DataLoader "can cause unreliable results" is not true here
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
    # every resume finds the run's own checkpoints/ full, by design
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # launch chooses the cluster environment from how it started the ranks (runtime/build.py)
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    # pytorch_lightning's own use of a torch API torch deprecated, once a rank: not the user's to act on
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class FitSession:
    """One rank's fit as launch runs it, whoever built the model and the Trainer (a job file's
    classes, or a user's script): the preemption handler and its records, resuming from the
    newest checkpoint, `last.ckpt`, and the run's record at the end."""

    def __init__(self, cfg: JobConfig, run: RunDir, rank: int) -> None:
        self.cfg, self.run, self.rank = cfg, run, rank
        self.resume: Path | str | None = None  # a checkpoint file, or a script's fit(ckpt_path="last"/"best"/...)
        self.rewound: dict[str, Any] = {}
        ck = cfg.checkpoint
        auto = AutoInterval(cfg.cluster.node_mtbf_hours, cfg.resources.nodes) if ck.every_n_minutes == "auto" else None
        self.handler = PreemptionHandler(
            signals.preemption_signals(cfg.cluster.signal), str(run.preempt_checkpoint), self._on_preempt,
            self._on_resume, periodic_path=str(run.periodic_checkpoint), every_n_steps=ck.every_n_train_steps,
            every_n_minutes=0.0 if auto else ck.every_n_minutes, rewind=self._rewind,
            drill_steps=cfg.job.drill_preempt_at_steps, background=cfg.strategy.async_checkpoints, auto=auto,
            on_interval=self._on_interval)
        self.callbacks: list[Any] = [self.handler] if cfg.job.preemptible else []

    def _on_interval(self, every_s: float, save_s: float, why: str) -> None:
        """Rank zero chose the periodic checkpoint's interval (checkpoint.every_n_minutes = "auto")."""
        self.run.add_event(Event.CHECKPOINT_INTERVAL, every_s=round(every_s, 1), save_s=round(save_s, 4), why=why)
        print(f"[launch] periodic checkpoint {why}", flush=True)

    def _on_preempt(self, trainer: Any, info: Preemption) -> None:
        if trainer.global_rank == 0:
            self.run.add_event(Event.PREEMPTED, **info.to_json())
        print(f"preemption: all ranks stop after step {info.step} (signal: {info.signal})", flush=True)

    def _on_resume(self, trainer: Any, mid_epoch: bool) -> None:
        if trainer.global_rank == 0:
            self.run.add_event(Event.RESUMED, global_step=int(trainer.global_step), epoch=int(trainer.current_epoch),
                               mid_epoch=mid_epoch, checkpoint=Path(self.resume).name if self.resume else None, **self.rewound)

    def _rewind(self, trainer: Any, logged_steps: int | None) -> None:
        """History after the checkpoint (a crash's lost steps) goes: they are trained again."""
        if logged_steps is not None:
            self.rewound.update(history_kept_to_step=logged_steps,
                                csv_rows_dropped=rewind_history(trainer.loggers, logged_steps))

    def prepare(self, model: Any, datamodule: Any) -> None:
        """What launch adds to the user's model and data before fit."""
        guard_evaluation_logging(model)
        if self.cfg.strategy.name == "fsdp":
            from launcher.runtime.fsdp import install_sharding

            install_sharding(model, self.cfg.strategy)
        if datamodule is not None:
            # Lightning's flag: prepare_data on local rank 0 of every node, or on global rank 0 only.
            datamodule.prepare_data_per_node = not self.cfg.cluster.shared_filesystem
            once_per_job(datamodule, "prepare_data")  # Lightning calls it again for test; once is the contract

    def fit(self, trainer: Any, model: Any, fit: Any = None, ckpt_path: Any = None, **data: Any) -> bool:
        """Fit from launch's newest checkpoint (else `ckpt_path`); False: preempted, and saved.
        `fit`: the Trainer's own fit (a script's Trainer has launch's in its place)."""
        self.prepare(model, data.get("datamodule"))
        # a script's own ckpt_path as given: Lightning reads "last", "best", "hpc", "registry" by name
        self.resume = find_resume_checkpoint(self.run) or ckpt_path
        if self.rank == 0:
            self.run.add_event(Event.TRAINING_STARTED, world_size=self.cfg.world_size,
                               resume_from=Path(self.resume).name if self.resume else None, lightning=NAME,
                               lightning_loaded=loaded(), fork_guard=cpython_compat.guarded())
        if self.cfg.performance.compile:
            # The network's forward only (state_dict keys unchanged); training_step, its logging and
            # torchmetrics stay eager. Compiling the module's call, as torch.compile(model) or
            # model.compile() do, takes in the whole training_step under DDP (Lightning routes the
            # step through forward): dynamo then recompiles on every metric update, gives up after 8
            # and runs a mix that differs after a resume. Static shapes: a kernel per input shape, the
            # same whatever was compiled before it, so a resumed attempt computes bit for bit what an
            # uninterrupted one does.
            import torch

            model.forward = torch.compile(model.forward, dynamic=False)
        try:
            # weights_only=False: the run's own checkpoint, which holds RNG states (numpy, python)
            (fit or trainer.fit)(model, ckpt_path=self.resume, weights_only=False, **data)
        except Preempted:
            # Saved. Back in the queue: the batch script's end hook requeues the job (on SLURM), outside
            # the ranks and any container, so no rank needs SLURM's tools; locally the supervisor restarts it.
            finish_heartbeat(trainer)
            return False
        trainer.save_checkpoint(self.run.last_checkpoint)
        return True

    def finish(self, trainer: Any, metrics: dict[str, float]) -> None:
        """The run's record, once training (and the test after it) is done."""
        cfg, run = self.cfg, self.run
        finish_heartbeat(trainer)  # the heartbeat watched fit, the last save and the test; not what follows
        late = None
        if cfg.job.preemptible and signals.is_set():  # a signal, yet no stop: say so, do not drop it silently
            late = (f"a preemption signal (SIG{signals.name()}) came after the last point training could stop at (the "
                    "last epoch's end, or the final test): the run finished instead of stopping")
            print(f"[launch] {late}", flush=True)
        if self.rank == 0:
            remove_checkpoint(run.preempt_checkpoint)  # superseded by last.ckpt
            remove_checkpoint(run.periodic_checkpoint)
            for partial in run.checkpoints.glob(".*.partial"):  # a sharded write a crash interrupted
                remove_checkpoint(partial)
            metrics = {**metrics, **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
            run.add_event(
                Event.TRAINED,
                global_step=int(trainer.global_step),
                epoch=int(trainer.current_epoch),
                interrupted=bool(trainer.interrupted),
                metrics=metrics,
                t=round(time.time(), 3),
                **({"note": late} if late else {}),
            )
