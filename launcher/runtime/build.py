"""The job's parts from its frozen config: the LightningModule and DataModule, and the Trainer
(DDP, launch's checkpointing, loggers and callbacks) that every rank runs."""

from __future__ import annotations

import importlib
import inspect
import os
from datetime import timedelta
from typing import Any

from launcher.config import JobConfig, split_class_path
from launcher.rundir import RunDir
from launcher.runtime import callbacks as job_callbacks
from launcher.runtime import trackers
from launcher.runtime.checkpoint_io import AtomicCheckpointIO
from launcher.runtime.heartbeat import Heartbeat
from launcher.runtime.lightning_api import SLURMEnvironment, TorchElasticEnvironment, Trainer, seed_everything
from launcher.runtime.lightning_compat import TimedProgressBar, disable_lightning_signal_handling
from launcher.runtime.loggers import ContinuingCSVLogger, LaunchTensorBoardLogger
from launcher.runtime.model_checkpoint import LaunchModelCheckpoint
from launcher.runtime.optimizers import install_optimizer
from launcher.runtime.progress import RunProgress
from launcher.runtime.strategy import LaunchDDPStrategy


def load_class(section: str, class_path: str) -> type:
    module_name, name = split_class_path(section, class_path)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f"{section}.class_path: module {module_name!r} has no attribute {name!r}") from None


def user_logger(comp: Any, run: RunDir) -> Any:
    """A [[loggers]] entry. Unless the job file says otherwise, one that takes a `save_dir` writes
    under the run directory (`loggers/<class name>`), and one that takes a `version` gets the run
    id, so that every attempt continues the same version (Lightning would start a new one each)."""
    cls = load_class("loggers", comp.class_path)
    args = dict(comp.init_args)
    takes = inspect.signature(cls).parameters
    if "save_dir" not in args and "save_dir" in takes:
        args["save_dir"] = str(run.user_logger_dir(cls.__name__))
    if "version" not in args and "version" in takes:
        args["version"] = run.run_id
    return cls(**args)


def build_model_and_data(cfg: JobConfig) -> tuple[Any, Any]:
    """The job's LightningModule and DataModule from the config, seeded, with the job file's
    optimizer and memory format: what the ranks train, and what tune and predict load."""
    seed_everything(cfg.job.seed, workers=True)
    datamodule = load_class("data", cfg.data.class_path)(**cfg.data.init_args)
    model = load_class("model", cfg.model.class_path)(**cfg.model.init_args)
    install_optimizer(model, cfg)
    if cfg.performance.channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    return model, datamodule


def build_trainer(cfg: JobConfig, run: RunDir, extra_callbacks: list[Any]) -> Any:
    """The Trainer every rank runs: launch's DDP, atomic checkpoints, one run's loggers."""
    trainer_args = {k: v for k, v in vars(cfg.trainer).items() if v is not None}
    trainer = Trainer(**{**trainer_args, **launch_trainer_args(cfg, run, extra_callbacks)})
    disable_lightning_signal_handling(trainer)
    return trainer


def launch_trainer_args(cfg: JobConfig, run: RunDir, extra_callbacks: list[Any], checkpointing: bool = True,
                        user_callbacks: tuple[Any, ...] = (), progress_bar: bool | None = None) -> dict[str, Any]:
    """The Trainer arguments launch owns: devices, nodes, its strategy, its checkpoints (a
    ModelCheckpoint per [checkpoint] unless `checkpointing` is False), the run's loggers and
    callbacks (`user_callbacks`: a script's own, placed where a job file's [[callbacks]] go), the
    run directory, the profiler. A job file's [trainer] adds the rest; a script's own Trainer(...)
    arguments do (runtime/script.py)."""
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
    common = {"seed_samples": cfg.job.seed_per_sample, "preemptible": cfg.job.preemptible,
              "cluster_environment": environment, "process_group_backend": "nccl" if cfg.uses_gpus else "gloo",
              "timeout": timedelta(seconds=cfg.job.collective_timeout_s)}
    strategy: Any
    if cfg.strategy.name == "fsdp":
        from launcher.runtime.fsdp import LaunchFSDPStrategy

        strategy = LaunchFSDPStrategy(world_size=cfg.world_size, **common)
    else:
        strategy = LaunchDDPStrategy(fixed_buckets=cfg.job.fixed_ddp_buckets, checkpoint_io=AtomicCheckpointIO(),
                                     find_unused_parameters=cfg.job.find_unused_parameters, **common)
    ck = cfg.checkpoint
    checkpoint = [] if not checkpointing else [LaunchModelCheckpoint(
        dirpath=run.checkpoints,
        filename=ck.filename,
        monitor=ck.monitor,
        mode=ck.mode,
        save_top_k=ck.save_top_k,
        save_last=ck.save_last,
        every_n_epochs=ck.every_n_epochs,
        # A preemptible job's step-interval checkpoint is launch's full-state one (checkpoints/
        # resume.ckpt, at a boundary it resumes exactly from); ModelCheckpoint keeps the epoch ends.
        every_n_train_steps=None if cfg.job.preemptible else ck.every_n_train_steps,
    )]
    loggers: list[Any] = []
    if cfg.logging.tensorboard:
        loggers.append(LaunchTensorBoardLogger(save_dir=run.path, name="tensorboard", version="",
                                               default_hp_metric=False))
    if cfg.logging.csv:
        loggers.append(ContinuingCSVLogger(save_dir=run.path, name="", version=""))
    loggers += trackers.from_job_file(cfg, run) + [user_logger(comp, run) for comp in cfg.loggers]
    gates = [cb.gate for cb in extra_callbacks if hasattr(cb, "gate")]  # first: see preemption.StopGate
    callbacks: list[Any] = [*gates, *checkpoint, RunProgress(run), Heartbeat(run, compute=cfg.job.straggler_factor > 0),
                            *job_callbacks.from_job_file(cfg, run, bool(loggers)),
                            *(load_class("callbacks", c.class_path)(**c.init_args) for c in cfg.callbacks),
                            *user_callbacks,
                            *extra_callbacks]
    if cfg.job.preflight:  # before any other callback's setup (after the stop gates, which have none)
        from launcher.runtime.preflight import Preflight

        callbacks.insert(len(gates), Preflight(run, list(cfg.cluster.node_check)))
    if cfg.job.fingerprints:  # after the preemption handler: it records the state a resumed batch starts from
        from launcher.runtime.fingerprints import Fingerprints

        callbacks.append(Fingerprints(run.fingerprints))
    if cfg.job.drill_kill_at_step:
        from launcher.runtime.fingerprints import KillDrill

        callbacks.append(KillDrill(run, cfg.job.drill_kill_at_step))
    if cfg.trainer.enable_progress_bar if progress_bar is None else progress_bar:
        callbacks.append(TimedProgressBar())
    return {"accelerator": "gpu" if cfg.uses_gpus else "cpu", "devices": cfg.procs_per_node,
            "num_nodes": cfg.resources.nodes, "strategy": strategy, "logger": loggers or False, "callbacks": callbacks,
            "default_root_dir": run.path, "profiler": job_callbacks.profiler(cfg, run)}
