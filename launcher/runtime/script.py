"""A user's own Lightning script in a rank: run unchanged, every Trainer it builds made launch's.

`launch submit train.py -- ARGS` (or `[job] script` and `args`): each rank runs the script as
`python train.py ARGS` would (as `__main__`, with that sys.argv and its folder first on sys.path),
while the Trainer class of the job's Lightning (lightning_api) is launch's:
- `Trainer(...)`: launch owns where and how the ranks train (accelerator, devices, num_nodes,
  strategy: launch's exact DDP or FSDP as the job says) and the run directory (default_root_dir,
  the run's TensorBoard and metrics.csv besides the script's own loggers, checkpoints/ for its
  ModelCheckpoint), and adds its callbacks (preemption, periodic full-state checkpoints,
  progress, heartbeats) to the script's. The script's other arguments stand, except those the job
  sets in [trainer] (or --set trainer.KEY=..., as smoke, verify and sweep do): those win. Where
  the script set one launch owns or the job replaces, rank zero says once, in the console, what
  launch decided and why.
- `Trainer.fit`: launch's fit (FitSession): it resumes from the run's newest complete checkpoint
  (the script's `ckpt_path` is used only when the run has none yet), stops exactly on a
  preemption, and writes `last.ckpt`. One fit per run: a second `fit` is refused in one line.
After the script: the run's record; a script that ends without calling `fit` fails in one line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import runpy
import sys
from pathlib import Path
from typing import Any

from launcher.config import JobConfig
from launcher.config.schema import TrainerSection
from launcher.rundir import RunDir
from launcher.runtime import lightning_api as api
from launcher.runtime.build import launch_trainer_args
from launcher.runtime.fit import FitSession, quiet_lightning_advice
from launcher.runtime.lightning_compat import checkpoint_step_interval, disable_lightning_signal_handling
from launcher.usercode import script_path

# Trainer arguments launch decides, and why (said when a script sets one of them)
OWNED = {
    "accelerator": "the job's resources (--gpus / --procs)",
    "devices": "the job's resources (--gpus / --procs)",
    "num_nodes": "the job's --nodes",
    "strategy": "launch's strategy (exact-resume DDP, or FSDP with strategy.name = \"fsdp\")",
    "default_root_dir": "the run directory",
}


def job_trainer_args(cfg: JobConfig) -> dict[str, Any]:
    """The [trainer] values the job sets (those other than their defaults): they replace the
    script's own Trainer arguments of the same names (the profiler is launch's in any case)."""
    default = TrainerSection()
    return {f.name: getattr(cfg.trainer, f.name) for f in dataclasses.fields(TrainerSection)
            if f.name != "profiler" and getattr(cfg.trainer, f.name) != getattr(default, f.name)}


class ScriptError(RuntimeError):
    """The script does something launch cannot keep alive (said in one line)."""


class _Stopped(BaseException):  # noqa: N818 - not an error: the attempt ends here, saved
    """Raised through the script when fit stopped for a preemption (a BaseException: the script's
    own `except Exception` must not swallow it)."""


def run_script(cfg: JobConfig, run: RunDir, rank: int) -> None:
    quiet_lightning_advice()
    session = FitSession(cfg, run, rank)
    trainer_class = api.Trainer
    original_init, original_fit = trainer_class.__init__, trainer_class.fit
    fitted: list[tuple[Any, dict[str, float]]] = []
    said: set[str] = set()

    def say(text: str) -> None:
        if rank == 0 and text not in said:
            said.add(text)
            print(f"[launch] {text}", flush=True)

    defaults = {k: p.default for k, p in inspect.signature(original_init).parameters.items()}
    replaced = job_trainer_args(cfg)

    @functools.wraps(original_init)  # its signature: LightningCLI builds its trainer options from it
    def init(self: Any, **kwargs: Any) -> None:
        for key, why in OWNED.items():
            # LightningCLI passes every argument, most at its default: only a choice is reported
            if key in kwargs and (value := kwargs.pop(key)) != defaults.get(key):
                say(f"Trainer({key}={value!r}) in the script: launch sets it from {why}")
        for key, value in replaced.items():
            if key in kwargs and kwargs[key] != value:
                say(f"Trainer({key}={kwargs[key]!r}) in the script: the job's trainer.{key} = {value!r} replaces it")
            kwargs[key] = value
        callbacks = kwargs.pop("callbacks", None) or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        own_checkpoints = [cb for cb in callbacks if isinstance(cb, api.ModelCheckpoint)]
        for cb in own_checkpoints:
            if cb.dirpath is None:
                cb.dirpath = str(run.checkpoints)
            if cfg.job.preemptible and (every := checkpoint_step_interval(cb)):
                say(f"the script's ModelCheckpoint saves every {every} steps: kept, but a resume "
                    "starts from launch's own full-state checkpoints (checkpoint.every_n_train_steps, "
                    "every_n_minutes, and at a preemption), which also hold the data position and every RNG")
        disabled = kwargs.get("enable_checkpointing") is False
        if disabled:
            say("Trainer(enable_checkpointing=False) in the script: no ModelCheckpoint (no best or epoch checkpoints; "
                "last.ckpt is still written at the end); launch's own (preemption, periodic) still keep the run alive")
        # Lightning takes one progress bar, and none with enable_progress_bar=False (the job's, if it sets it)
        bar_wanted = kwargs.get("enable_progress_bar", True) is not False
        own_bar = next((cb for cb in callbacks if isinstance(cb, api.ProgressBar)), None)
        if own_bar is not None and bar_wanted:
            say(f"the script's own progress bar ({type(own_bar).__name__}) is kept: launch adds none")
        elif own_bar is not None:
            say(f"the script's own progress bar ({type(own_bar).__name__}) is left out: trainer.enable_progress_bar "
                "is false")
            callbacks = [cb for cb in callbacks if not isinstance(cb, api.ProgressBar)]
        ours = launch_trainer_args(cfg, run, session.callbacks, checkpointing=not (disabled or own_checkpoints),
                                   user_callbacks=tuple(callbacks), progress_bar=own_bar is None and bar_wanted)
        loggers = kwargs.pop("logger", None)
        if loggers is False:
            say("Trainer(logger=False) in the script: launch still writes the run's metrics.csv and tensorboard/")
        elif loggers not in (None, True):
            ours["logger"] = [*(ours["logger"] or []), *(loggers if isinstance(loggers, (list, tuple)) else [loggers])]
        for cb in callbacks:
            if type(cb).__name__ == "SaveConfigCallback" and not getattr(cb, "overwrite", True):
                cb.overwrite = True  # LightningCLI's config.yaml: every attempt writes the same one again
        if ours.get("profiler") is None and kwargs.get("profiler") is not None:
            ours.pop("profiler")  # the script's own profiler, unless the job file names one
        original_init(self, **{**kwargs, **ours})
        disable_lightning_signal_handling(self)

    @functools.wraps(original_fit)
    def fit(self: Any, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None, datamodule: Any = None,
            ckpt_path: Any = None, weights_only: Any = None) -> None:
        if fitted:
            raise ScriptError("the script calls Trainer.fit a second time: launch keeps one fit a run alive (the first, "
                              "which has finished); run the next stage as a run of its own (launch submit next.py "
                              "--after RUN)")
        data = {k: v for k, v in (("train_dataloaders", train_dataloaders), ("val_dataloaders", val_dataloaders),
                                  ("datamodule", datamodule)) if v is not None}
        if ckpt_path is not None:
            say(f"fit(ckpt_path={ckpt_path!r}) in the script: used when the run has no checkpoint of its own yet; "
                "after that, every attempt resumes from the run's newest")
        if not session.fit(self, model, fit=functools.partial(original_fit, self), ckpt_path=ckpt_path, **data):
            raise _Stopped
        fitted.append((self, {k: float(v) for k, v in self.callback_metrics.items() if v.numel() == 1}))

    evaluations = {name: getattr(trainer_class, name) for name in ("validate", "test", "predict")}

    def evaluation(name: str) -> Any:
        """test/validate/predict(ckpt_path="best" or "last", or one of the run's files): checkpoints
        launch wrote hold the data position and RNG states (numpy's among them), which torch's
        weights-only loading refuses; from the run's own directory they load in full."""

        @functools.wraps(evaluations[name])
        def run_evaluation(self: Any, *args: Any, ckpt_path: Any = None, weights_only: Any = None, **kwargs: Any) -> Any:
            own = ckpt_path in ("best", "last") or (ckpt_path is not None and run.checkpoints in Path(ckpt_path).parents)
            if weights_only is None and own:
                weights_only = False
            return evaluations[name](self, *args, ckpt_path=ckpt_path, weights_only=weights_only, **kwargs)

        return run_evaluation

    trainer_class.__init__, trainer_class.fit = init, fit
    for name in evaluations:
        setattr(trainer_class, name, evaluation(name))
    api.seed_everything(cfg.job.seed, workers=True, verbose=False)  # a script that seeds nothing still draws the same
    script = script_path(cfg, run)
    argv, path = sys.argv, list(sys.path)
    sys.argv = [str(script), *cfg.job.args]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Stopped:
        return
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        trainer_class.__init__, trainer_class.fit = original_init, original_fit
        for name, method in evaluations.items():
            setattr(trainer_class, name, method)
        sys.argv, sys.path[:] = argv, path
    if not fitted:
        raise ScriptError(f"{cfg.job.script} ended without calling Trainer.fit: there is no training for launch to "
                          "keep alive (does it train only under a condition, or from another entry point?)")
    trainer, metrics = fitted[0]
    session.finish(trainer, metrics)
