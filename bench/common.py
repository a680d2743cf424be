"""Shared pieces of the benchmarks: the same model and data for ours and the plain baseline."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from models.cnn import SmallCNN

SAMPLES, BATCH = 4096, 64


def synthetic_mnist(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(SAMPLES, 1, 28, 28, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g))


class SyntheticDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = BATCH) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        self.train_set = synthetic_mnist()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


class StepTimer:
    """Rank zero's wall time of each training step, and its training thread's CPU time in it (which
    leaves out the waits: another rank's, the machine's other work), written as JSON for the bench
    scripts: the wall times to `out`, the CPU times to `out.cpu`, and the wall-clock span of the
    steps after the first WARMUP_STEPS to `out.span`."""

    def __init__(self, out: str | None) -> None:
        self.out, self.times, self.cpu_times = out, [], []
        self._t = self._cpu = None
        self._counted_from: float | None = None  # the wall clock where the steps after warm-up begin

    def lap(self) -> None:
        """Time between consecutive calls: the whole step, data loading and hooks included."""
        now, cpu = time.perf_counter(), time.thread_time()
        if self._t is not None:
            self.times.append(now - self._t)
            self.cpu_times.append(cpu - self._cpu)
        if len(self.times) == WARMUP_STEPS:  # once: the list grows by one a lap
            self._counted_from = time.time()
        self._t, self._cpu = now, cpu

    def save(self, rank: int) -> None:
        if self.out and rank == 0:
            Path(self.out).write_text(json.dumps(self.times))
            Path(f"{self.out}.cpu").write_text(json.dumps(self.cpu_times))
            # the wall-clock span of the counted steps (bench/cpu_shares.py reads the machine in it)
            Path(f"{self.out}.span").write_text(json.dumps([self._counted_from, time.time()]))


class TimedCNN(SmallCNN):
    """SmallCNN that records the wall time between the starts of consecutive training batches."""

    def __init__(self, timings: str = "", sync_loss: bool = False, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.timer = StepTimer(timings or os.environ.get("BENCH_TIMINGS"))
        self.sync_step_loss = sync_loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        self.timer.lap()

    def on_train_end(self) -> None:
        self.timer.save(self.global_rank)


def hand_written_step(net, accuracy, optimizer, x, y, loss_sum, samples) -> None:  # noqa: ANN001
    """One step of the hand-written loop: forward, loss, the module's torchmetrics accuracy, the
    epoch loss's running sums (updated in place), zero_grad, backward, the optimizer's step."""
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    accuracy(logits, y)
    loss_sum += loss.detach() * len(y)
    samples += len(y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def plain_ddp_setup() -> tuple[TimedCNN, DistributedDataParallel, torch.optim.Optimizer, DistributedSampler,
                               DataLoader]:
    """The hand-written side (run under torchrun): a gloo process group, the seeded model wrapped
    in DDP, its own optimizer, and the synthetic data sharded by a DistributedSampler."""
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = TimedCNN()
    ddp = DistributedDataParallel(model)
    data = synthetic_mnist()
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    return model, ddp, model.configure_optimizers(), sampler, DataLoader(data, batch_size=BATCH, sampler=sampler)


# --------------------------------------------------------------------------- per-step cost budget

def timed_into(spent: dict[str, float], label: str, fn, when=None):  # noqa: ANN001, ANN201
    """`fn`, adding the wall time of each call to spent[label] (only while `when()` is true, if given)."""

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if when is not None and not when():
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

    return timed


# The Trainer hooks that run on every training step (Lightning calls each callback's by name).
STEP_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_zero_grad",
              "on_before_optimizer_step", "on_train_batch_end")


class HookTimedCNN(TimedCNN):
    """TimedCNN that also times, in place, every launch callback's per-step hooks (and the stop
    agreement and per-sample seeding inside them), and the background writers' time off the
    training thread; each rank writes its totals to `<timings>.rank-N.json` (bench/step_overhead.py)."""

    def __init__(self, timings: str = "", **kwargs) -> None:  # noqa: ANN003
        super().__init__(timings=timings, **kwargs)
        self.spent: dict[str, float] = {}
        self.counting = False

    def _timed(self, label: str, fn):  # noqa: ANN001, ANN202
        return timed_into(self.spent, label, fn, lambda: self.counting)

    def on_fit_start(self) -> None:
        from launcher.runtime import beat_channel, heartbeat, progress, samplers
        from launcher.runtime.preemption import PreemptionHandler

        for callback in self.trainer.callbacks:
            label = type(callback).__name__
            for hook in STEP_HOOKS:
                if getattr(type(callback), hook) is not getattr(pl.Callback, hook):  # overridden: it does work
                    setattr(callback, hook, self._timed(label, getattr(callback, hook)))
            if isinstance(callback, heartbeat.Heartbeat):  # the straggler watch's gradient hooks (autograd calls them)
                callback._gradient = self._timed("Heartbeat gradient hooks (straggler watch)", callback._gradient)
            if isinstance(callback, PreemptionHandler):  # the agreement's all-reduce, apart from the rest
                callback._agree_to_stop = self._timed("stop agreement (inside PreemptionHandler)",
                                                      callback._agree_to_stop)
        ddp = getattr(self.trainer.strategy, "model", None)
        if hasattr(ddp, "_post_forward"):  # DDP's own per-step work (find_unused_parameters: a graph walk)
            ddp._pre_forward = self._timed("DDP pre/post forward (bucket bookkeeping)", ddp._pre_forward)
            ddp._post_forward = self._timed("DDP pre/post forward (bucket bookkeeping)", ddp._post_forward)
        # per-sample seeding runs inside the loader's fetch (num_workers = 0: on the training thread)
        samplers.seed_all = self._timed("per-sample seeding (data fetch)", samplers.seed_all)
        samplers._saved_rngs = self._timed("per-sample seeding (data fetch)", samplers._saved_rngs)
        samplers._put_back = self._timed("per-sample seeding (data fetch)", samplers._put_back)
        samplers._moved_unseeded = self._timed("per-sample seeding (data fetch)", samplers._moved_unseeded)
        # off the training thread: the progress writer and the heartbeat's sends (node-local, or the node's file)
        progress.RunProgress._write = self._timed("[thread] progress.json writes", progress.RunProgress._write)
        beat_channel.BeatChannel.publish = self._timed("[thread] heartbeat sends", beat_channel.BeatChannel.publish)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        super().on_train_batch_start(batch, batch_idx)
        if len(self.timer.times) == WARMUP_STEPS:  # time only what the step timer counts
            self.counting = True
            self.spent.clear()

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.timer.out:
            counted = self.timer.times[WARMUP_STEPS:]
            Path(f"{self.timer.out}.rank-{self.global_rank}.json").write_text(json.dumps(
                {"steps": len(counted), "step_s": sum(counted), "spent_s": self.spent}))


WARMUP_STEPS = 20


# --------------------------------------------------------------------------- what an epoch end costs

# Rank zero's epoch-end work, timed in place by EpochEndTimedCNN: (module, class, method) wrapped at
# the class, where the class exists in this process (launch's, or Lightning's alone). No hook that
# LaunchModelCheckpoint inspects (on_save_checkpoint) is wrapped: that would change what it does.
EPOCH_END_PARTS = (
    ("pytorch_lightning.loops.fit_loop", "_FitLoop", "on_advance_end"),
    ("pytorch_lightning.callbacks.progress.tqdm_progress", "TQDMProgressBar", "on_train_epoch_end"),
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", "on_train_epoch_end"),
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", "_save_topk_checkpoint"),
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", "_save_last_checkpoint"),
    ("pytorch_lightning.trainer.connectors.checkpoint_connector", "_CheckpointConnector", "dump_checkpoint"),
    ("launcher.runtime.checkpoint_io", "AtomicCheckpointIO", "save_checkpoint"),
    ("lightning_fabric.plugins.io.torch_io", "TorchCheckpointIO", "save_checkpoint"),
    ("launcher.runtime.model_checkpoint", "LaunchModelCheckpoint", "_linked"),
    ("pytorch_lightning.trainer.connectors.logger_connector.logger_connector", "_LoggerConnector",
     "update_train_epoch_metrics"),
    ("pytorch_lightning.loggers.tensorboard", "TensorBoardLogger", "save"),
    ("lightning_fabric.loggers.csv_logs", "CSVLogger", "save"),
    ("launcher.runtime.progress", "RunProgress", "on_train_epoch_start"),
)


class EpochEndTimedCNN(TimedCNN):
    """TimedCNN whose rank zero times its epoch ends in place: each of EPOCH_END_PARTS, the gather
    of every rank's state and the collectives the Trainer makes through its strategy (which include
    the waits for the other ranks); writes ms an epoch end to `<timings>.epoch-end.json`
    (bench/epoch_end.py)."""

    def on_fit_start(self) -> None:
        import sys

        if self.global_rank != 0:
            return
        self.spent: dict[str, float] = {}
        for module_name, class_name, method in EPOCH_END_PARTS:  # only what this process has imported
            cls = getattr(sys.modules.get(module_name), class_name, None)
            if cls is not None and method in cls.__dict__:
                setattr(cls, method, self._timed(f"{class_name}.{method}", cls.__dict__[method]))
        preemption = sys.modules.get("launcher.runtime.preemption")
        if preemption is not None:
            preemption.gather_to_rank_zero = self._timed("gather of the ranks' states", preemption.gather_to_rank_zero)
        strategy = self.trainer.strategy
        for name in ("barrier", "broadcast", "reduce_boolean_decision"):
            setattr(strategy, name, self._timed(f"strategy.{name} (collective)", getattr(strategy, name)))

    def _timed(self, label: str, fn):  # noqa: ANN001, ANN202
        return timed_into(self.spent, label, fn)

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.global_rank == 0 and self.timer.out:
            epochs = max(1, self.trainer.current_epoch)
            Path(f"{self.timer.out}.epoch-end.json").write_text(json.dumps(
                {"epochs": epochs, "ms": {k: v * 1e3 / epochs for k, v in self.spent.items()}}))
