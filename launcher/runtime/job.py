"""Build the DataModule, the LightningModule and the Trainer from the run's frozen config, and run.

Imports of torch and Lightning happen only after rank-aware output is installed (see output.py).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from launcher.config import JobConfig, load_resolved, split_class_path
from launcher.rundir import RunDir, atomic_write_text
from launcher.runtime import output, signals


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_path = argv[0] if argv else os.environ.get("LAUNCH_RUN_DIR", "")
    if not run_path:
        print("usage: python -m launcher.runtime RUN_DIR", file=sys.stderr)
        return 2
    run = RunDir(Path(run_path))
    rank, _ = output.rank_from_env()
    output.install(run.rank_log(rank), rank)
    # Removed on every way out of this function; left behind only by a rank that died without a
    # Python error (SIGKILL, out of memory, a native crash), which is how the backends name it.
    alive = run.alive_marker(rank)
    try:
        atomic_write_text(alive, json.dumps({"rank": rank, "host": host_name(), "pid": os.getpid()}))
    except OSError:
        pass
    try:
        return _main(run, rank)
    finally:
        alive.unlink(missing_ok=True)


def _main(run: RunDir, rank: int) -> int:
    try:
        cfg = load_resolved(run.config)
        # Own the preemption signal from the first moment: its default action kills the process.
        if cfg.job.preemptible:
            signals.install(signals.preemption_signals(cfg.cluster.signal))
        if cfg.run.workdir and cfg.run.workdir not in sys.path:
            sys.path.insert(0, cfg.run.workdir)  # the user's own modules, as at submission
        train(cfg, run, rank)
        close_process_group()
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, then re-raised as exit 1
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        text = traceback.format_exc()
        output.report_error(text)
        record = {"rank": rank, "host": host_name(), "type": type(exc).__name__,
                  "message": str(exc).strip().splitlines()[0][:500] if str(exc).strip() else "",
                  "traceback": text}
        try:
            atomic_write_text(run.errors / f"rank-{rank}.json", json.dumps(record, indent=1))
        except OSError:
            pass
        return 1
    return 0


def host_name() -> str:
    """The node as the cluster names it (SLURM's node name; several may share one machine)."""
    return os.environ.get("SLURMD_NODENAME") or os.uname().nodename


def close_process_group() -> None:
    """Tear the process group down before the interpreter exits.

    Left to exit-time destructors, gloo's background threads are sometimes destroyed while
    joinable, and the process aborts ("terminate called without an active exception") after the
    run has already succeeded.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def load_class(section: str, class_path: str) -> type:
    module_name, name = split_class_path(section, class_path)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f"{section}.class_path: module {module_name!r} has no attribute {name!r}") from None


def build_trainer(cfg: JobConfig, run: RunDir, extra_callbacks: list[Any]) -> Any:
    from datetime import timedelta

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    from launcher.runtime import toolbox
    from launcher.runtime.parts import (
        AtomicCheckpointIO,
        ContinuingCSVLogger,
        LaunchDDPStrategy,
        RunProgress,
        TimedProgressBar,
    )

    if not cfg.uses_gpus:
        # Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (to keep CUDA out of forked
        # workers). With CUDA never initialised, as in a CPU run, every torch.cuda.is_available()
        # then loads NVML again, and torch's optimizers ask once per step (about 40 us a step
        # here, which a hand-written loop without Lightning does not pay). A CPU run never
        # initialises CUDA, so torch's own check is the right one.
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    # Chosen from how we started the ranks, never guessed: inside a SLURM allocation running
    # torchrun, Lightning's own detection would pick SLURMEnvironment and get the ranks wrong.
    if os.environ.get("LAUNCH_MODE") == "srun":
        environment = SLURMEnvironment(auto_requeue=False)
    else:
        environment = TorchElasticEnvironment()
    strategy = LaunchDDPStrategy(
        cluster_environment=environment,
        checkpoint_io=AtomicCheckpointIO(),
        process_group_backend="nccl" if cfg.uses_gpus else "gloo",
        timeout=timedelta(seconds=cfg.job.collective_timeout_s),
    )
    ck = cfg.checkpoint
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints,
        filename=ck.filename,
        monitor=ck.monitor,
        mode=ck.mode,
        save_top_k=ck.save_top_k,
        save_last=ck.save_last,
        every_n_epochs=ck.every_n_epochs,
        every_n_train_steps=ck.every_n_train_steps,
    )
    loggers: list[Any] = []
    if cfg.logging.tensorboard:
        loggers.append(toolbox.LaunchTensorBoardLogger(save_dir=run.path, name="tensorboard", version="",
                                                       default_hp_metric=False))
    if cfg.logging.csv:
        loggers.append(ContinuingCSVLogger(save_dir=run.path, name="", version=""))
    gates = [cb.gate for cb in extra_callbacks if hasattr(cb, "gate")]  # first: see preemption.StopGate
    callbacks: list[Any] = [*gates, checkpoint, RunProgress(run), *toolbox.callbacks(cfg, run, bool(loggers)),
                            *extra_callbacks]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TimedProgressBar())
    trainer_args = {k: v for k, v in vars(cfg.trainer).items() if v is not None}
    trainer_args["profiler"] = toolbox.profiler(cfg, run)
    trainer = pl.Trainer(
        accelerator="gpu" if cfg.uses_gpus else "cpu",
        devices=cfg.procs_per_node,
        num_nodes=cfg.resources.nodes,
        strategy=strategy,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=run.path,
        **trainer_args,
    )
    # Lightning would install its own SIGTERM handler at every fit, after on_fit_start, and it
    # runs a broadcast inside the handler (a collective one rank can enter alone): launch's
    # handlers, installed at start, stay the only ones.
    trainer._signal_connector.register_signal_handlers = lambda: None
    # ...so its SIGTERM flag can never be set, yet its training loop broadcasts that flag from
    # rank zero before every batch: a collective per step, for nothing.
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None
    return trainer


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
    """The newest complete checkpoint of the run (writes are atomic: a visible file is whole)."""
    candidates = [p for p in run.checkpoints.glob("*.ckpt") if not p.name.startswith(".")]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)


def requeue_on_slurm(run: RunDir) -> None:
    """Rank zero puts the job back in the queue, unless the user asked to cancel it."""
    import subprocess

    from launcher.backends.slurm_hooks import current_job_id

    job_id = current_job_id()
    # Only a cancel of this job counts: a run resumed after `launch cancel` is a new job.
    this_job = [e for e in run.read_events() if e.get("slurm_job_id") == job_id]
    if not job_id or any(e.get("event") == "cancel_requested" for e in this_job):
        return
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if out.returncode == 0:
        run.add_event("requeued", slurm_job_id=job_id)
    else:
        run.add_event("requeue_failed", slurm_job_id=job_id, error=(out.stderr or out.stdout).strip()[:300])


def build_model_and_data(cfg: JobConfig) -> tuple[Any, Any]:
    """The job's LightningModule and DataModule from the config, seeded, with the job file's
    optimizer and memory format: what the ranks train, and what tune and predict load."""
    import pytorch_lightning as pl

    from launcher.runtime import toolbox

    pl.seed_everything(cfg.job.seed, workers=True)
    datamodule = load_class("data", cfg.data.class_path)(**cfg.data.init_args)
    model = load_class("model", cfg.model.class_path)(**cfg.model.init_args)
    toolbox.install_optimizer(model, cfg)
    if cfg.performance.channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    return model, datamodule


def train(cfg: JobConfig, run: RunDir, rank: int) -> None:
    from pytorch_lightning.utilities.model_helpers import is_overridden

    from launcher.runtime.preemption import PREEMPT_CKPT, Preempted, PreemptionHandler

    output.route_logging("pytorch_lightning", "lightning_fabric")
    # LaunchDDPStrategy evaluates every sample exactly once, so Lightning's advice is moot.
    warnings.filterwarnings("ignore", message=r".*Using `DistributedSampler` with the dataloaders")
    model, datamodule = build_model_and_data(cfg)
    # Lightning's flag: prepare_data on local rank 0 of every node, or on global rank 0 only.
    datamodule.prepare_data_per_node = not cfg.cluster.shared_filesystem
    once_per_job(datamodule, "prepare_data")  # Lightning calls it again for test; once is the contract

    def on_preempt(trainer: Any, info: dict[str, Any]) -> None:
        if trainer.global_rank == 0:
            run.add_event("preempted", **info)
        print(f"preemption: all ranks stop after step {info['step']} (signal: {info['signal']})", flush=True)

    def on_resume(trainer: Any, mid_epoch: bool) -> None:
        if trainer.global_rank == 0:
            run.add_event("resumed", global_step=int(trainer.global_step), epoch=int(trainer.current_epoch),
                          mid_epoch=mid_epoch, checkpoint=resume.name if resume else None)

    handler = PreemptionHandler(signals.preemption_signals(cfg.cluster.signal), str(run.checkpoints / PREEMPT_CKPT),
                                on_preempt, on_resume)
    trainer = build_trainer(cfg, run, [handler] if cfg.job.preemptible else [])
    resume = find_resume_checkpoint(run)
    if rank == 0:
        run.add_event("training_started", world_size=cfg.world_size, resume_from=resume.name if resume else None)
    if cfg.performance.compile:
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
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=False)
    except Preempted:
        if rank == 0 and os.environ.get("LAUNCH_BACKEND") == "slurm":
            requeue_on_slurm(run)
        return
    trainer.save_checkpoint(run.checkpoints / "last.ckpt")
    # the end-of-fit metrics (test replaces callback_metrics with its own): both are reported
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.job.test_after_fit and is_overridden("test_dataloader", datamodule) and not trainer.interrupted:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if best else None, weights_only=False)
    if rank == 0:
        (run.checkpoints / PREEMPT_CKPT).unlink(missing_ok=True)  # superseded by last.ckpt
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        run.add_event(
            "trained",
            global_step=int(trainer.global_step),
            epoch=int(trainer.current_epoch),
            interrupted=bool(trainer.interrupted),
            metrics=metrics,
            t=round(time.time(), 3),
        )
