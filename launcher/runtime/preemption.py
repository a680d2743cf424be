"""Preemption: one signal owner, a stop all ranks agree on, a full-state checkpoint, exact resume.

The signal handler only sets a flag. At a *safe* batch boundary every rank joins one small
all-reduce (MAX of the flags), so a signal seen by any rank stops all of them at the same step.
A boundary is safe when the optimizer has just stepped (no half-accumulated gradients) and no
validation or epoch end follows it: Lightning's restart logic would skip those. The agreement
runs about once a second, not every step (a collective is a sync point, and rank skew then costs
throughput): the same all-reduce carries rank zero's choice of the step of the next agreement,
from its measured step time, so every rank knows it without another collective.

At that boundary the checkpoint is saved (atomically, by rank zero, with every rank's RNG and
metric state gathered into it); the ranks raise `Preempted` at the start of the next batch, after
Lightning has logged the stopped step, so no metric row is lost or repeated.

On resume the state that Lightning does not restore is put back at the first resumed batch:
the data position (the sampler skips the batches already seen this epoch), the torch / numpy /
python / CUDA RNG of every rank, torchmetrics states, and the epoch accumulators of `self.log`.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset
from torchmetrics import Metric

from launcher.checkpoint_interval import CHANGE, AutoInterval
from launcher.records import Preemption
from launcher.rundir import checkpoint_bytes
from launcher.runtime import lightning_compat as compat
from launcher.runtime import signals
from launcher.runtime.lightning_api import Callback, LightningModule, StochasticWeightAveraging, Trainer, TrainerFn
from launcher.runtime.rank_states import gather_to_rank_zero
from launcher.runtime.samplers import ResumableDistributedSampler
from launcher.runtime.stateful_data import batch_state
from launcher.runtime.strategy import ExactData, stateful
from launcher.runtime.streams import replays

AGREE_EVERY_S = 1.0  # the stop agreement's period: signal-to-stop latency is at most this plus a step
AGREE_MAX_STEPS = 1000

class Preempted(Exception):
    """Raised on every rank after the preemption checkpoint is complete."""

    def __init__(self, step: int, epoch: int) -> None:
        super().__init__(f"preempted at step {step} (epoch {epoch}); state saved")
        self.step, self.epoch = step, epoch


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _metric_states(module: LightningModule) -> dict[str, Any]:
    """Every torchmetrics Metric's accumulated state, by module name."""
    return {name: compat.metric_state(m) for name, m in module.named_modules() if isinstance(m, Metric)}


def _load_metric_states(module: LightningModule, states: dict[str, Any], merge: list[dict[str, Any]]) -> None:
    """Each Metric's saved state; then, resuming on fewer ranks, the other saved ranks' merged in."""
    modules = dict(module.named_modules())
    for name, saved in states.items():
        metric = modules.get(name)
        if isinstance(metric, Metric):
            compat.load_metric_state(metric, saved)
    for other in merge:
        for name, saved in other.items():
            metric = modules.get(name)
            if isinstance(metric, Metric):
                compat.merge_metric_state(metric, saved)


def _positionable(loader: Any) -> bool:
    """Whether launch can put this training loader back where a preempted epoch stopped."""
    if isinstance(getattr(loader, "sampler", None), ResumableDistributedSampler) or stateful(loader) or replays(loader):
        return True
    return isinstance(getattr(loader, "dataset", None), IterableDataset) and stateful(loader.dataset)


def _data_state(trainer: Trainer, batches: int) -> dict[str, Any]:
    """This rank's own data position beyond the sampler, after `batches` batches of the epoch:
    stateful loaders' states, and an iterable dataset's own state."""
    loaders = compat.train_dataloaders(trainer)
    state: dict[str, Any] = {"loaders": [batch_state(dl, batches) for dl in loaders if stateful(dl)]}
    datasets = [dl.dataset for dl in loaders if not stateful(dl) and not replays(dl)
                and isinstance(getattr(dl, "dataset", None), IterableDataset)]
    if datasets and stateful(datasets[0]):
        state["dataset"] = batch_state(datasets[0], batches)
    if any(replays(dl) for dl in loaders):
        state["stream"] = True  # replayed: its position is this rank's shard's
    return state


def _global_batch(trainer: Trainer) -> int | None:
    """Samples a step over all ranks, from the training loader's batch size (as launch may have scaled it)."""
    for loader in compat.train_dataloaders(trainer):
        sampler = getattr(loader, "batch_sampler", None)
        size = getattr(sampler, "batch_size", None) or getattr(loader, "batch_size", None)
        if size:
            return int(size) * trainer.world_size
    return None


def flush_loggers(trainer: Trainer) -> None:
    """Put every row logged so far on disk (rank zero): metrics.csv, TensorBoard's event file."""
    for logger in trainer.loggers:
        logger.save()
        flush = getattr(logger.experiment, "flush", None)
        if callable(flush):
            flush()


class StopGate(Callback):
    """Raises `Preempted` at the start of the batch after the stop, before any other callback's
    on_train_batch_start (build_trainer puts it first): nothing is logged for a step that will
    run again after the resume (LearningRateMonitor logs there, for one)."""

    def __init__(self, handler: PreemptionHandler) -> None:
        self.handler = handler

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.handler.stop_at is not None:
            raise Preempted(*self.handler.stop_at)


class PreemptionHandler(Callback):
    """Owns the preemption signal for the whole fit (see the module docstring)."""

    def __init__(self, signal_numbers: list[int], checkpoint_path: str, on_preempt: Any, on_resume: Any,
                 periodic_path: str | None = None, every_n_steps: int | None = None, every_n_minutes: float = 0.0,
                 rewind: Any = None, drill_steps: list[int] | None = None, background: bool = False,
                 auto: AutoInterval | None = None, on_interval: Any = None) -> None:
        self.signals = signal_numbers
        self.checkpoint_path = checkpoint_path
        self.on_preempt = on_preempt  # called on every rank with (trainer, Preemption) after the save
        self.on_resume = on_resume  # called on every rank with (trainer, mid_epoch) when training restarts
        # The periodic full-state checkpoint: due every `every_n_steps` optimizer steps and every
        # `every_n_minutes` (rank zero's clock, agreed in the stop agreement's all-reduce), taken at
        # the first safe boundary from then on. Its state is taken at that boundary and written at
        # the start of the next batch, after the step's metrics are logged and the loggers flushed:
        # whatever a crash interrupts, the newest checkpoint's history is on disk.
        self.periodic_path = periodic_path
        self.every_n_steps = every_n_steps
        # checkpoint.every_n_minutes = "auto": the interval follows rank zero's timed periodic saves
        # (launcher/checkpoint_interval.py); `on_interval(every_s, save_s, why)` on rank zero when it moves
        self.auto, self.on_interval = auto, on_interval
        self.every_n_s = auto.seconds(None) if auto is not None else float(every_n_minutes) * 60.0
        self._save_s: float | None = None
        self._dump_s = 0.0
        self._announced: float | None = None
        self.background = background  # the periodic checkpoint is written in the background (strategy.async_checkpoints)
        self.rewind = rewind  # called on rank zero with (trainer, logged_steps) before a resumed fit logs
        self._schedule_periodic(0)
        self._to_write: dict[str, Any] | None = None
        self.drill_steps = set(drill_steps or ())  # job.drill_preempt_at_steps (launch verify)
        self.stop_at: tuple[int, int] | None = None
        self._pending_restore: dict[str, Any] | None = None
        self._accumulators_to_add: list[dict[str, Any]] = []
        self._resume_position: tuple[int, int] | None = None
        self._saving_batch: tuple[int, int | None] = (0, None)
        self._resumed = False
        self.gate = StopGate(self)
        self._next_agreement = 0  # the global step at (or after) which the ranks next agree
        self._last_agreement: tuple[int, float] | None = None  # (global step, time) of the last one

    # -- ownership of the signal
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Installed at process start already; again here in case user code replaced them.
        # (build_trainer keeps Lightning from registering its own.)
        signals.install(self.signals)

    # -- saving
    def _safe_boundary(self, trainer: Trainer, batch_idx: int) -> bool:
        if compat.accumulating(trainer):
            return False
        if batch_idx + 1 >= trainer.num_training_batches:
            return False  # an epoch end follows: validation, epoch-interval schedulers, callbacks
        if compat.validation_follows(trainer):
            return False
        return not (0 < trainer.max_steps <= trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for saved in self._accumulators_to_add:
            compat.add_epoch_accumulators(trainer, saved)
        self._accumulators_to_add = []
        step = trainer.global_step
        if step in self.drill_steps:  # a preemption drill: as if rank zero were signalled now
            if trainer.global_rank == 0:
                signals.set_flag(int(signal.SIGUSR1))
            self._next_agreement = min(self._next_agreement, step)  # every rank: agree at once
        steps_due = self.periodic_path is not None and self.every_n_steps is not None and step >= self._next_periodic_step
        agree = step >= self._next_agreement
        if not (agree or steps_due or self._time_due) or not self._safe_boundary(trainer, batch_idx):
            return
        if agree and self._agree_to_stop(trainer):
            self._stop(trainer, batch_idx)
        elif steps_due or self._time_due:
            self._take_periodic(trainer, batch_idx)

    def _take_periodic(self, trainer: Trainer, batch_idx: int) -> None:
        """The periodic checkpoint's state, now (every rank: the RNG and metric states are gathered);
        written at the next batch's start."""
        self._saving_batch = (trainer.current_epoch, batch_idx + 1)
        started = time.perf_counter()
        self._to_write = compat.dump_checkpoint(trainer)
        self._dump_s = time.perf_counter() - started
        self._schedule_periodic(trainer.global_step)

    def _schedule_periodic(self, step: int) -> None:
        """The periodic checkpoint is next due every_n_steps after `step` (on the multiples), and
        every_n_minutes from now."""
        self._time_due, self._periodic_at = False, time.monotonic()
        self._next_periodic_step = (step // self.every_n_steps + 1) * self.every_n_steps if self.every_n_steps else 0

    def _write_periodic(self, trainer: Trainer) -> None:
        checkpoint, self._to_write = self._to_write, None
        if trainer.global_rank == 0:
            flush_loggers(trainer)  # the steps up to this checkpoint's are on disk before it is
        started = time.perf_counter()
        in_background = getattr(trainer.strategy, "save_checkpoint_in_background", None)
        if self.background and in_background is not None:
            in_background(checkpoint, self.periodic_path)
        else:
            trainer.strategy.save_checkpoint(checkpoint, self.periodic_path)
        if self.auto is not None and trainer.global_rank == 0:
            self._timed_save(self._dump_s + time.perf_counter() - started)

    def _timed_save(self, blocked_s: float) -> None:
        """A periodic save blocked training this long: the auto interval follows (up at once, down
        slowly), announced when it moves by more than CHANGE."""
        self._save_s = blocked_s if self._save_s is None else max(blocked_s, 0.8 * self._save_s)
        self.every_n_s = self.auto.seconds(self._save_s)
        if self._announced is None or abs(self.every_n_s - self._announced) > CHANGE * self._announced:
            self._announced = self.every_n_s
            if self.on_interval is not None:
                self.on_interval(self.every_n_s, self._save_s, self.auto.why(self._save_s))

    def _stop(self, trainer: Trainer, batch_idx: int) -> None:
        started = time.time()
        self._saving_batch = (trainer.current_epoch, batch_idx + 1)
        trainer.save_checkpoint(self.checkpoint_path)
        saved = time.time()
        self.stop_at = (trainer.global_step, trainer.current_epoch)
        self.on_preempt(trainer, Preemption(
            step=trainer.global_step,
            epoch=trainer.current_epoch,
            batch_in_epoch=batch_idx + 1,
            signal=signal.Signals(signals.received["signum"]).name if signals.is_set() else "from another rank",
            signal_at=signals.received["at"],
            signal_to_saved_s=round(saved - signals.received["at"], 3) if signals.is_set() else None,
            save_s=round(saved - started, 3),
            checkpoint_bytes=checkpoint_bytes(Path(self.checkpoint_path)) if trainer.global_rank == 0 else None,
        ))

    def _agree_to_stop(self, trainer: Trainer) -> bool:
        """One all-reduce: whether any rank was signalled, and the step of the next agreement."""
        step, now = trainer.global_step, time.monotonic()
        every = 1
        if trainer.global_rank == 0 and self._last_agreement is not None:
            last_step, last_time = self._last_agreement
            if step > last_step and now > last_time:
                every = int(AGREE_EVERY_S / ((now - last_time) / (step - last_step)))
        every = max(1, min(every, AGREE_MAX_STEPS)) if trainer.global_rank == 0 else 0
        # rank zero's clock says whether the periodic checkpoint is due: one clock, one decision
        time_due = int(trainer.global_rank == 0 and self.periodic_path is not None and self.every_n_s > 0
                       and now - self._periodic_at >= self.every_n_s)
        message = torch.tensor([1 if signals.is_set() else 0, every, time_due], device=trainer.strategy.root_device)
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            dist.all_reduce(message, op=dist.ReduceOp.MAX)
        self._last_agreement = (step, now)
        self._next_agreement = step + int(message[1].item())
        self._time_due = self._time_due or bool(message[2].item())
        return bool(message[0].item())

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Gather every rank's state that Lightning does not keep (a collective: all ranks save)."""
        epoch, batches = self._saving_batch
        if batches is None:
            epoch = trainer.current_epoch
        self._saving_batch = (trainer.current_epoch, None)
        mine = {
            "rank": trainer.global_rank,
            "rng": _rng_state(),
            "metrics": _metric_states(pl_module),
            "accumulators": compat.epoch_accumulators(trainer) if batches is not None else {},
            "data": _data_state(trainer, batches) if batches is not None else {},
        }
        # only rank zero writes the checkpoint: the other ranks' copy of this entry has no "ranks"
        ranks = gather_to_rank_zero(mine, trainer.world_size)
        checkpoint["launch"] = {"world_size": trainer.world_size, "ranks": ranks, "epoch": epoch,
                                "batches_in_epoch": batches, "global_batch": _global_batch(trainer)}

    # -- resuming
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Runs before Lightning restores its loops and builds the training loader: the position
        this rank resumes at is handed to the strategy, which builds the loader."""
        self._resumed = True
        if isinstance(trainer.strategy, ExactData):
            trainer.strategy.restored_epoch = compat.restored_epoch(checkpoint)
        if self.rewind is not None and trainer.global_rank == 0 and trainer.state.fn == TrainerFn.FITTING:
            self.rewind(trainer, compat.logged_steps(checkpoint))  # not for test's load of the best checkpoint
        state = checkpoint.get("launch")
        if not state:
            return
        old_w, new_w, rank = state["world_size"], trainer.world_size, trainer.global_rank
        if old_w != new_w and isinstance(trainer.strategy, ExactData):
            trainer.strategy.global_batch = state.get("global_batch")
        if state.get("batches_in_epoch") is None:
            # An epoch-end checkpoint: Lightning restores the rest; metric states were reset then.
            self._pending_restore = {"rng": state["ranks"][rank % old_w]["rng"], "metrics": {}}
            return
        # On another world size (launch resume --procs/--nodes), every saved rank's metric and epoch
        # accumulator state lands on exactly one rank (rank i on i mod the new world size, states
        # merged), so what the ranks sync at the epoch's end is the same total; a rank takes the RNG
        # of the saved rank it is, modulo the old world size.
        own = [state["ranks"][r] for r in range(old_w) if r % new_w == rank] if new_w <= old_w else \
            [state["ranks"][rank]] if rank < old_w else []
        if old_w != new_w and any(r.get("data", {}).get("loaders") or {"dataset", "stream"} & r.get("data", {}).keys()
                                  for r in state["ranks"]):
            raise RuntimeError(f"the checkpoint was saved by {old_w} ranks and this job has {new_w}: an iterable or "
                               "stateful loader's position belongs to its rank; resume on the run's own world size")
        metrics = [r["metrics"] for r in own]
        mine = {**state["ranks"][rank % old_w], "metrics": metrics[0] if metrics else {}, "merge": metrics[1:]}
        self._pending_restore = mine
        self._accumulators_to_add = [r["accumulators"] for r in own]
        self._resume_position = (state["epoch"], state["batches_in_epoch"])
        data = mine.get("data", {})
        if isinstance(trainer.strategy, ExactData):
            trainer.strategy.resume_position = self._resume_position
            trainer.strategy.resume_dataset_state = data.get("dataset")
        if data.get("loaders"):  # Lightning keeps rank zero's loader states only: each rank gets its own
            compat.set_checkpoint_loader_states(checkpoint, data["loaders"])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._schedule_periodic(trainer.global_step)
        if self._resumed:
            self.on_resume(trainer, self._resume_position is not None)
        if self._resume_position is None:
            return
        if not any(_positionable(dl) for dl in compat.train_dataloaders(trainer)):
            raise RuntimeError("resuming mid-epoch needs a training loader launch can position: a map-style dataset "
                               "with Lightning's default sampler, a stateful loader, or an iterable dataset")
        # Lightning does not call on_train_epoch_start for an epoch it resumes part-way.
        # StochasticWeightAveraging sets itself up there (its SWALR scheduler, restored from the
        # checkpoint); the averaging it also does there is skipped for an epoch already averaged.
        for callback in trainer.callbacks:
            if isinstance(callback, StochasticWeightAveraging):
                callback.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Lightning skips the epoch-interval LR schedulers (ReduceLROnPlateau included) at the end of
        an epoch it resumed part-way, which an uninterrupted run steps there: end the restart now,
        just before that step. (This callback runs before the module's hook and the monitoring
        callbacks; in an uninterrupted run those, too, see a fit loop that is not restarting.)"""
        if self._resume_position is not None and trainer.current_epoch == self._resume_position[0]:
            compat.end_restart(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._to_write is not None:
            self._write_periodic(trainer)
        if self._pending_restore is not None:
            _set_rng_state(self._pending_restore["rng"])
            _load_metric_states(pl_module, self._pending_restore["metrics"], self._pending_restore.get("merge", []))
            self._pending_restore = None
