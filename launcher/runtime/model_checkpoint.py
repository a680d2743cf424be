"""launch's ModelCheckpoint: last.ckpt a hard link to the checkpoint saved at the same step.

Lightning writes last.ckpt right after the step's top-k checkpoint: a second full save of the same
state (every rank's RNG and metric states gathered again, the model and optimizer serialised and
fsynced again). Where that second file would hold what the first holds, rank zero links last.ckpt
to it instead (`link_atomically`: made under a temp name and renamed over, so a kill leaves
the previous last.ckpt or the new one). Both hold the same state when
- this callback saved a checkpoint at this global step (its top-k one, just before),
- that file was written with `last_model_path` already this last.ckpt (Lightning sets it just
  before the last save; with a fixed name it is, from the second last save of a run on), and
- no callback and not the module has an `on_save_checkpoint` that could put something else in a
  second save (launch's preemption handler and heartbeat would put the same).
Otherwise, and where the filesystem makes no hard links (a sharded checkpoint is a directory),
Lightning's own save runs. Overrides ModelCheckpoint's `_save_checkpoint` (Lightning 2.6, as
lightning_versions checks), its bookkeeping read and kept through lightning_compat.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from weakref import proxy

from launcher.rundir import fsync_dir
from launcher.runtime import lightning_compat as compat
from launcher.runtime.heartbeat import Heartbeat
from launcher.runtime.lightning_api import Callback, LightningModule, ModelCheckpoint
from launcher.runtime.preemption import PreemptionHandler

# the on_save_checkpoint hooks that put the same into a second save at the same step
SAME_EVERY_SAVE = (Callback.on_save_checkpoint, PreemptionHandler.on_save_checkpoint, Heartbeat.on_save_checkpoint)


def own_save_hooks(trainer: Any) -> list[str]:
    """The callbacks and the module whose on_save_checkpoint is not one of SAME_EVERY_SAVE."""
    def set_on_instance(obj: Any) -> bool:
        return "on_save_checkpoint" in getattr(obj, "__dict__", {})  # a hook set on the object itself

    own = [type(cb).__name__ for cb in trainer.callbacks
           if set_on_instance(cb) or type(cb).on_save_checkpoint not in SAME_EVERY_SAVE]
    module = trainer.lightning_module
    if set_on_instance(module) or type(module).on_save_checkpoint is not LightningModule.on_save_checkpoint:
        own.append(type(module).__name__)
    return own


def link_atomically(source: Path, path: Path) -> bool:
    """Make `path` a second name of `source`'s file (a hard link, no bytes copied), replacing any
    `path` in one rename: a kill leaves the previous `path` or the new one, never none. False,
    with nothing changed, where `source` is not a regular file or the filesystem makes no links."""
    if not source.is_file():
        return False
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    tmp.unlink(missing_ok=True)  # rename() leaves both names where `path` already was this file
    fsync_dir(path.parent)
    return True


class LaunchModelCheckpoint(ModelCheckpoint):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._written_with_last: str | None = None  # the last_model_path inside the newest file saved

    def _generate_state_key(self, **kwargs: Any) -> str:
        # ModelCheckpoint's key in a checkpoint's callbacks: earlier checkpoints restore into this
        return f"{ModelCheckpoint.__qualname__}{kwargs!r}"

    def file_exists(self, filepath: Any, trainer: Any) -> bool:
        """Lightning's check (an all-reduce of rank zero's answer), skipped where its answer is not
        read: before every last save Lightning asks whether last.ckpt's name is taken, and stops
        asking at `filepath != last_model_path`, so for this callback's own last.ckpt any answer
        does. Every rank skips alike: with no field in CHECKPOINT_NAME_LAST the name is the same on
        each (a field such as a metric not synchronised could read differently by rank)."""
        if filepath == self.last_model_path and "{" not in self.CHECKPOINT_NAME_LAST:
            return True
        return super().file_exists(filepath, trainer)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        if filepath == self.last_model_path and self._linked(trainer, filepath):
            return
        self._written_with_last = self.last_model_path
        compat.lightning_model_checkpoint_save(self, trainer, filepath)

    def _linked(self, trainer: Any, filepath: str) -> bool:
        """Link last.ckpt to the top-k file saved at this step, if it would hold the same; True if done.

        Every rank comes here for every last.ckpt (Lightning names it alike on each) and every rank
        agrees in one all-reduce, linked or not: whether a second save would be the same is found
        rank by rank (a callback's own on_save_checkpoint may exist on one rank alone), and a rank
        that saved while another linked would wait in the save's collectives for ever."""
        source, step = compat.model_checkpoint_saved(self)
        same = bool(source and self._written_with_last == filepath and step == trainer.global_step
                    and os.path.abspath(source) != os.path.abspath(filepath) and not own_save_hooks(trainer))
        linked = same and (link_atomically(Path(source), Path(filepath)) if trainer.is_global_zero else True)
        if not trainer.strategy.reduce_boolean_decision(linked, all=True):  # every rank links, or every rank saves
            return False
        compat.record_model_checkpoint_link(self, filepath)  # Lightning's bookkeeping after a save
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        return True
